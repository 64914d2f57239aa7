#pragma once

// Where `sdgen` finds the model it uses without --model: the default model
// installed with it (share/sdgen/models/default), found relative to the
// running executable so that a moved install still works.

#include <string>
#include <vector>

namespace sdgen::cli {

// The folders looked at, in order: $SDGEN_DEFAULT_MODEL when set (alone: it
// is used even when missing), else <exe dir>/../share/sdgen/models/default
// (an install: bin/ next to share/) and <exe dir>/share/sdgen/models/default
// (the build folder, where CMake links it to the source tree's models/default).
std::vector<std::string> default_model_candidates();

// The first candidate that exists (or $SDGEN_DEFAULT_MODEL as given). Throws
// CliError (kExitModel) listing every folder looked at when none exists.
std::string find_default_model();

}  // namespace sdgen::cli
