#pragma once

// Output file names for batch runs (-o PATTERN) and sharding (--shard K/N).
// Pure functions over strings (fuzzable).

#include <cstdint>
#include <string>

namespace sdgen {

struct OutputFields {
  int64_t index = 0;  // image number across the whole prompt file
  uint64_t seed = 0;
  std::string prompt;  // slugged by expand_output_pattern
  int line = 0;        // prompt-file line (0 without a prompt file)
};

// A short, safe file-name piece of a prompt: lower-case ASCII letters and
// digits, other characters collapsed to single '-', at most max_length bytes,
// "prompt" when nothing is left.
std::string prompt_slug(const std::string& prompt, size_t max_length = 40);

// True when the pattern names any field ({index} {seed} {prompt} {line} or %d).
bool output_pattern_has_fields(const std::string& pattern);

// Expands {index} {seed} {prompt} {line}, printf-style %d / %0Nd / %Nd (the
// index), "{{" "}}" "%%" (literal braces/percent). Throws Error naming the
// pattern for an unknown {field} or an unclosed '{'.
std::string expand_output_pattern(const std::string& pattern, const OutputFields& fields);

// out.png -> out-3.png (the name used when a pattern without fields must
// hold several images).
std::string with_index_suffix(const std::string& path, int64_t index);

struct Shard {
  int index = 0;  // K
  int count = 1;  // N
};
// "K/N" with 0 <= K < N; throws Error quoting the text otherwise.
Shard parse_shard(const std::string& text);
// Whether prompt-file entry `entry_index` (0-based) belongs to `shard`.
inline bool in_shard(int64_t entry_index, const Shard& shard) {
  return entry_index % shard.count == shard.index;
}

}  // namespace sdgen
