#include "sdgen/prompt_weights.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace sdgen {
namespace {

bool is_word_char(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

// Python's re.split(r"\s*\bBREAK\b\s*", text): the pieces between the
// occurrences of the word BREAK (with the whitespace around it).
std::vector<std::string> split_break(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0, search = 0;
  while (true) {
    const size_t at = text.find("BREAK", search);
    if (at == std::string::npos) break;
    const size_t end = at + 5;
    const bool left = at == 0 || !is_word_char(static_cast<unsigned char>(text[at - 1]));
    const bool right = end == text.size() || !is_word_char(static_cast<unsigned char>(text[end]));
    if (!left || !right) {
      search = at + 1;
      continue;
    }
    size_t cut_begin = at;
    while (cut_begin > start && std::isspace(static_cast<unsigned char>(text[cut_begin - 1])))
      --cut_begin;
    size_t cut_end = end;
    while (cut_end < text.size() && std::isspace(static_cast<unsigned char>(text[cut_end])))
      ++cut_end;
    parts.push_back(text.substr(start, cut_begin - start));
    start = search = cut_end;
  }
  parts.push_back(text.substr(start));
  return parts;
}

// The weight group of ":\s*([+-]?[.\d]+)\s*\)" at text[pos] (pos at ':'):
// sets `length` to the match length and returns true when it matches.
bool match_weight(const std::string& text, size_t pos, size_t& length, double& weight) {
  size_t i = pos + 1;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  const size_t number_begin = i;
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) ++i;
  const size_t digits_begin = i;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.'))
    ++i;
  if (i == digits_begin) return false;
  const size_t number_end = i;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  if (i >= text.size() || text[i] != ')') return false;
  // Python's float() rejects strings such as "1.2.3" or "."; A1111 would raise
  // there, sdgen keeps the text literal instead.
  const std::string number = text.substr(number_begin, number_end - number_begin);
  char* end = nullptr;
  const double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size()) return false;
  weight = value;
  length = i + 1 - pos;
  return true;
}

}  // namespace

// Follows A1111 modules/prompt_parser.py parse_prompt_attention, whose regex
// alternatives are tried in this order at each position:
//   \( \) \[ \] \\ (escapes)  \ (lone backslash)  (  [  :weight)  )  ]
//   [^\\()\[\]:]+ (text)  : (a colon that is not a weight)
std::vector<WeightedText> parse_prompt_attention(const std::string& prompt) {
  std::vector<WeightedText> res;
  std::vector<size_t> round_brackets, square_brackets;
  const double round_multiplier = 1.1, square_multiplier = 1 / 1.1;
  // A1111 also multiplies a BREAK's weight (-1) inside brackets, which turns it
  // into the literal word "BREAK"; sdgen keeps it a BREAK wherever it is.
  auto multiply_range = [&res](size_t start, double multiplier) {
    for (size_t p = start; p < res.size(); ++p)
      if (!res[p].is_break) res[p].weight *= multiplier;
  };
  auto add_text = [&res](const std::string& text) {
    const auto parts = split_break(text);
    for (size_t i = 0; i < parts.size(); ++i) {
      if (i > 0) res.push_back({"BREAK", -1, true});
      res.push_back({parts[i], 1.0, false});
    }
  };

  size_t pos = 0;
  while (pos < prompt.size()) {
    const char c = prompt[pos];
    if (c == '\\') {
      // "\(", "\)", "\[", "\]", "\\" give the character; a lone backslash
      // matches "\\" and contributes text[1:] = "".
      if (pos + 1 < prompt.size() &&
          std::string("()[]\\").find(prompt[pos + 1]) != std::string::npos) {
        res.push_back({std::string(1, prompt[pos + 1]), 1.0, false});
        pos += 2;
      } else {
        res.push_back({"", 1.0, false});
        pos += 1;
      }
      continue;
    }
    if (c == '(') {
      round_brackets.push_back(res.size());
      ++pos;
      continue;
    }
    if (c == '[') {
      square_brackets.push_back(res.size());
      ++pos;
      continue;
    }
    if (c == ':') {
      size_t length = 0;
      double weight = 1.0;
      if (match_weight(prompt, pos, length, weight)) {
        if (!round_brackets.empty()) {
          multiply_range(round_brackets.back(), weight);
          round_brackets.pop_back();
        } else {
          add_text(prompt.substr(pos, length));
        }
        pos += length;
      } else {
        add_text(":");
        ++pos;
      }
      continue;
    }
    if (c == ')') {
      if (!round_brackets.empty()) {
        multiply_range(round_brackets.back(), round_multiplier);
        round_brackets.pop_back();
      } else {
        add_text(")");
      }
      ++pos;
      continue;
    }
    if (c == ']') {
      if (!square_brackets.empty()) {
        multiply_range(square_brackets.back(), square_multiplier);
        square_brackets.pop_back();
      } else {
        add_text("]");
      }
      ++pos;
      continue;
    }
    const size_t end = prompt.find_first_of("\\()[]:", pos);
    const size_t stop = end == std::string::npos ? prompt.size() : end;
    add_text(prompt.substr(pos, stop - pos));
    pos = stop;
  }
  // Unclosed brackets still apply to everything after them.
  for (size_t p : round_brackets) multiply_range(p, round_multiplier);
  for (size_t p : square_brackets) multiply_range(p, square_multiplier);
  if (res.empty()) res.push_back({"", 1.0, false});

  // Merge runs of identical weights (a BREAK has weight -1, so it merges only
  // with another BREAK, as in A1111). One pass: A1111's erase-in-a-loop is
  // quadratic, and "a:b:c:..." makes one run per ':' (a 160 KB prompt took a
  // minute).
  std::vector<WeightedText> merged;
  merged.reserve(res.size());
  for (auto& run : res) {
    if (!merged.empty() && merged.back().weight == run.weight)
      merged.back().text += run.text;
    else
      merged.push_back(std::move(run));
  }
  return merged;
}

bool is_plain_prompt(const std::vector<WeightedText>& parsed) {
  return parsed.size() == 1 && !parsed[0].is_break && parsed[0].weight == 1.0;
}

std::vector<PromptChunk> split_prompt_chunks(const std::vector<WeightedText>& parsed,
                                             const TokenizeFn& tokenize,
                                             const ChunkingOptions& options) {
  const size_t length = static_cast<size_t>(options.chunk_length > 0 ? options.chunk_length : 75);
  std::vector<PromptChunk> chunks;
  PromptChunk chunk;
  long last_comma = -1;
  // next_chunk(): the padding and start/end tokens are added by the caller.
  auto next_chunk = [&]() {
    last_comma = -1;
    chunks.push_back(std::move(chunk));
    chunk = PromptChunk();
  };
  for (const auto& run : parsed) {
    if (run.is_break) {
      next_chunk();
      continue;
    }
    const std::vector<int64_t> tokens = tokenize(run.text);
    for (size_t position = 0; position < tokens.size();) {
      const int64_t token = tokens[position];
      if (token == options.comma_token && options.comma_token >= 0) {
        last_comma = static_cast<long>(chunk.tokens.size());
      } else if (options.comma_backtrack != 0 && chunk.tokens.size() == length &&
                 last_comma != -1 &&
                 static_cast<long>(chunk.tokens.size()) - last_comma <= options.comma_backtrack) {
        // The chunk is full: move the words after the last comma to the next one.
        const size_t cut = static_cast<size_t>(last_comma) + 1;
        std::vector<int64_t> moved_tokens(chunk.tokens.begin() + static_cast<std::ptrdiff_t>(cut),
                                          chunk.tokens.end());
        std::vector<double> moved_mults(
            chunk.multipliers.begin() + static_cast<std::ptrdiff_t>(cut), chunk.multipliers.end());
        // Embeddings move with their tokens (A1111 leaves its fixes behind,
        // so their vectors land on the old chunk's padding instead).
        std::vector<ChunkFix> moved_fixes, kept_fixes;
        for (auto fix : chunk.fixes) {
          if (fix.offset >= cut) {
            fix.offset -= cut;
            moved_fixes.push_back(fix);
          } else {
            kept_fixes.push_back(fix);
          }
        }
        chunk.fixes = std::move(kept_fixes);
        chunk.tokens.resize(cut);
        chunk.multipliers.resize(cut);
        next_chunk();
        chunk.tokens = std::move(moved_tokens);
        chunk.multipliers = std::move(moved_mults);
        chunk.fixes = std::move(moved_fixes);
      }
      if (chunk.tokens.size() == length) next_chunk();
      const EmbeddingMatch found =
          options.find_embedding ? options.find_embedding(tokens, position) : EmbeddingMatch{};
      if (found.embedding < 0 || found.name_tokens == 0) {
        chunk.tokens.push_back(token);
        chunk.multipliers.push_back(run.weight);
        ++position;
        continue;
      }
      const size_t vectors = static_cast<size_t>(std::max(found.vectors, 0));
      if (chunk.tokens.size() + vectors > length) next_chunk();
      chunk.fixes.push_back({chunk.tokens.size(), found.embedding, found.vectors});
      chunk.tokens.insert(chunk.tokens.end(), vectors, options.placeholder_token);
      chunk.multipliers.insert(chunk.multipliers.end(), vectors, run.weight);
      position += found.name_tokens;
    }
  }
  if (!chunk.tokens.empty() || chunks.empty()) next_chunk();
  return chunks;
}

std::vector<PromptChunk> truncate_prompt_chunks(const std::vector<WeightedText>& parsed,
                                                const TokenizeFn& tokenize,
                                                const ChunkingOptions& options) {
  const size_t length = static_cast<size_t>(options.chunk_length > 0 ? options.chunk_length : 75);
  PromptChunk chunk;
  for (const auto& run : parsed) {
    if (run.is_break) continue;
    const std::vector<int64_t> tokens = tokenize(run.text);
    for (size_t position = 0; position < tokens.size();) {
      if (chunk.tokens.size() == length) return {chunk};
      const EmbeddingMatch found =
          options.find_embedding ? options.find_embedding(tokens, position) : EmbeddingMatch{};
      if (found.embedding < 0 || found.name_tokens == 0) {
        chunk.tokens.push_back(tokens[position]);
        chunk.multipliers.push_back(run.weight);
        ++position;
        continue;
      }
      // diffusers expands the name to its vectors' tokens, then truncates.
      const size_t room = length - chunk.tokens.size();
      const size_t vectors = std::min(static_cast<size_t>(std::max(found.vectors, 0)), room);
      chunk.fixes.push_back({chunk.tokens.size(), found.embedding, static_cast<int>(vectors)});
      chunk.tokens.insert(chunk.tokens.end(), vectors, options.placeholder_token);
      chunk.multipliers.insert(chunk.multipliers.end(), vectors, run.weight);
      position += found.name_tokens;
    }
  }
  return {chunk};
}

}  // namespace sdgen
