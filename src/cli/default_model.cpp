#include "default_model.h"

#include <cstdlib>
#include <filesystem>
#include <system_error>

#include "options.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

namespace {

// The folder of the running executable; empty when /proc is not mounted.
fs::path executable_dir() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

}  // namespace

std::vector<std::string> default_model_candidates() {
  if (const char* env = std::getenv("SDGEN_DEFAULT_MODEL")) return {env};
  const fs::path dir = executable_dir();
  if (dir.empty()) return {};
  const fs::path model = fs::path("share") / "sdgen" / "models" / "default";
  return {(dir.parent_path() / model).lexically_normal().string(), (dir / model).string()};
}

std::string find_default_model() {
  const auto candidates = default_model_candidates();
  if (std::getenv("SDGEN_DEFAULT_MODEL")) return candidates.front();
  std::string looked;
  for (const auto& path : candidates) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) return path;
    looked += (looked.empty() ? "" : ", ") + path;
  }
  if (looked.empty()) looked = "nowhere: /proc/self/exe is unreadable";
  throw CliError(kExitModel, "no --model given and no default model found (looked in " + looked +
                                 "); pass --model PATH or set SDGEN_DEFAULT_MODEL");
}

}  // namespace sdgen::cli
