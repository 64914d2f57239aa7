#pragma once

// A1111's prompt syntax: emphasis "(word)" x1.1, "((word))" x1.21, "[word]"
// /1.1, "(word:1.5)", "\(" escapes and "BREAK", and the split of a prompt into
// 75-token chunks that are encoded separately and concatenated. Pure functions
// over strings and token ids (no model), so that fuzzers can call them.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sdgen {

struct WeightedText {
  std::string text;
  double weight = 1.0;
  bool is_break = false;  // a BREAK: the next text starts a new chunk

  bool operator==(const WeightedText& o) const {
    return text == o.text && weight == o.weight && is_break == o.is_break;
  }
};

// A1111 prompt_parser.parse_prompt_attention: the prompt as runs of text with
// their weights, neighbouring runs of equal weight merged; never empty
// (an empty prompt gives one empty run of weight 1).
std::vector<WeightedText> parse_prompt_attention(const std::string& prompt);

// True when the parse is the prompt itself at weight 1 without BREAK, i.e. the
// prompt encodes exactly as diffusers encodes it.
bool is_plain_prompt(const std::vector<WeightedText>& parsed);

// Up to chunk_length token ids (no start/end/padding) and one multiplier each.
struct PromptChunk {
  std::vector<int64_t> tokens;
  std::vector<double> multipliers;
};

struct ChunkingOptions {
  int chunk_length = 75;     // tokens per chunk, without the start and end tokens
  int64_t comma_token = -1;  // id of ",</w>", -1 if unknown
  int comma_backtrack = 20;  // A1111's comma_padding_backtrack ("prompt word wrap length")
};

using TokenizeFn = std::function<std::vector<int64_t>(const std::string&)>;

// A1111 sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line:
// each run is tokenized on its own; a chunk is closed when it holds
// chunk_length tokens (moving the words after a comma within the last
// comma_backtrack tokens to the next chunk) or at a BREAK. Always at least one
// chunk (possibly empty).
std::vector<PromptChunk> split_prompt_chunks(const std::vector<WeightedText>& parsed,
                                             const TokenizeFn& tokenize,
                                             const ChunkingOptions& options = {});

// diffusers' behaviour (--long-prompt truncate): one chunk holding the first
// chunk_length tokens, BREAKs ignored.
std::vector<PromptChunk> truncate_prompt_chunks(const std::vector<WeightedText>& parsed,
                                                const TokenizeFn& tokenize,
                                                const ChunkingOptions& options = {});

}  // namespace sdgen
