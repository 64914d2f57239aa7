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

// A textual-inversion embedding whose vectors replace placeholder tokens of
// a chunk from `offset` on (an index into tokens, without the start token).
struct ChunkFix {
  size_t offset = 0;
  int embedding = -1;  // what EmbeddingFinder returned
  int vectors = 0;
  bool operator==(const ChunkFix& o) const {
    return offset == o.offset && embedding == o.embedding && vectors == o.vectors;
  }
};

// Up to chunk_length token ids (no start/end/padding) and one multiplier each.
struct PromptChunk {
  std::vector<int64_t> tokens;
  std::vector<double> multipliers;
  std::vector<ChunkFix> fixes;
};

// An embedding's name found in a prompt's tokens at a position
// (A1111 EmbeddingDatabase.find_embedding_at_position): which one (>= 0, the
// finder's own numbering), how many vectors it has and how many tokens its
// name took. embedding < 0: none there.
struct EmbeddingMatch {
  int embedding = -1;
  int vectors = 0;
  size_t name_tokens = 0;
};
using EmbeddingFinder =
    std::function<EmbeddingMatch(const std::vector<int64_t>& tokens, size_t position)>;

struct ChunkingOptions {
  int chunk_length = 75;     // tokens per chunk, without the start and end tokens
  int64_t comma_token = -1;  // id of ",</w>", -1 if unknown
  int comma_backtrack = 20;  // A1111's comma_padding_backtrack ("prompt word wrap length")
  // Textual-inversion embeddings: their names become `vectors` placeholder
  // tokens (id placeholder_token) and a ChunkFix; unset: none.
  EmbeddingFinder find_embedding;
  int64_t placeholder_token = 0;
};

using TokenizeFn = std::function<std::vector<int64_t>(const std::string&)>;

// A1111 sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line:
// each run is tokenized on its own; a chunk is closed when it holds
// chunk_length tokens (moving the words after a comma within the last
// comma_backtrack tokens to the next chunk) or at a BREAK; an embedding that
// does not fit in what is left of a chunk starts the next one. Always at least
// one chunk (possibly empty).
std::vector<PromptChunk> split_prompt_chunks(const std::vector<WeightedText>& parsed,
                                             const TokenizeFn& tokenize,
                                             const ChunkingOptions& options = {});

// diffusers' behaviour (--long-prompt truncate): one chunk holding the first
// chunk_length tokens, BREAKs ignored.
std::vector<PromptChunk> truncate_prompt_chunks(const std::vector<WeightedText>& parsed,
                                                const TokenizeFn& tokenize,
                                                const ChunkingOptions& options = {});

}  // namespace sdgen
