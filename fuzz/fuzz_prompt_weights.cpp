// libFuzzer target: A1111 prompt-weight parsing ("(word:1.2)", "[word]",
// escapes, BREAK) and the split into 75-token chunks with comma backtracking.
// The first two bytes choose the chunk length and backtrack window; the
// tokenizer is a stand-in (one token per byte, ',' the comma token), so the
// chunking invariants can be checked exactly: no token lost, reordered or
// duplicated, no chunk longer than its length.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "sdgen/prompt_weights.h"

namespace {

std::vector<int64_t> byte_tokens(const std::string& text) {
  return std::vector<int64_t>(text.begin(), text.end());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  sdgen::ChunkingOptions options;
  options.chunk_length = data[0] % 80;  // 0 means the default (75)
  options.comma_backtrack = static_cast<int>(data[1] % 40) - 4;
  options.comma_token = data[1] & 0x80 ? -1 : ',';
  const std::string prompt(reinterpret_cast<const char*>(data) + 2, size - 2);

  const auto parsed = sdgen::parse_prompt_attention(prompt);
  if (parsed.empty()) std::abort();
  (void)sdgen::is_plain_prompt(parsed);
  std::vector<int64_t> all_tokens;
  for (const auto& run : parsed) {
    if (run.is_break) continue;
    const auto t = byte_tokens(run.text);
    all_tokens.insert(all_tokens.end(), t.begin(), t.end());
  }
  const size_t length = options.chunk_length > 0 ? static_cast<size_t>(options.chunk_length) : 75;

  const auto chunks = sdgen::split_prompt_chunks(parsed, byte_tokens, options);
  if (chunks.empty()) std::abort();
  std::vector<int64_t> joined;
  for (const auto& c : chunks) {
    if (c.tokens.size() != c.multipliers.size() || c.tokens.size() > length) std::abort();
    joined.insert(joined.end(), c.tokens.begin(), c.tokens.end());
  }
  if (joined != all_tokens) std::abort();

  const auto truncated = sdgen::truncate_prompt_chunks(parsed, byte_tokens, options);
  if (truncated.size() != 1) std::abort();
  const auto& t = truncated[0];
  if (t.tokens.size() != t.multipliers.size() || t.tokens.size() > length ||
      t.tokens.size() != std::min(length, all_tokens.size()) ||
      !std::equal(t.tokens.begin(), t.tokens.end(), all_tokens.begin()))
    std::abort();
  return 0;
}
