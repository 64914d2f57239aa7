#pragma once

// Prompt files (--prompt-file): one entry per line. A plain line is a prompt;
// blank lines and lines starting with '#' are skipped; a line starting with
// '{' is a JSON object that may set any setting with a prompt-file key in the
// settings table (sdgen/settings.def). Pure functions over strings
// (fuzzable); the CLI reads the lines.

#include <cstddef>
#include <string>
#include <vector>

#include "sdgen/settings.h"

namespace sdgen {

struct PromptEntry {
  int line = 0;           // 1-based line number in the file
  SettingLayer settings;  // what the line sets, checked ("prompt" for a plain line)
};

struct PromptLine {
  enum class Kind { skip, entry, error };
  Kind kind = Kind::skip;
  PromptEntry entry;  // when kind == entry
  std::string error;  // when kind == error: "line N: ..." naming the key at fault
};

// Longer lines are errors: 64 KiB is ~200 of A1111's 75-token chunks, far
// beyond any real prompt, and keeps a runaway line from costing minutes of
// text encoding.
constexpr size_t kMaxPromptLineBytes = 64 * 1024;

// The JSON keys a line may set: prompt_file_keys() (sdgen/settings.h).

// Parses one line (without its '\n'; a trailing '\r' is ignored). Checks
// each value against its setting's rule (sizes positive multiples of 8 up to
// 8192, steps 1..1000, batch_size 1..64, ...); never throws.
PromptLine parse_prompt_line(const std::string& line, int line_number);

// All lines of a text (e.g. a whole file), in order, numbered from 1.
std::vector<PromptLine> parse_prompt_text(const std::string& text);

}  // namespace sdgen
