#include "sdgen/tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "sdgen/error.h"
#include "unicode_tables.h"
#include "utf8.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

constexpr const char* kEndOfWord = "</w>";

// ---- byte-level symbols (GPT-2 / CLIP bytes_to_unicode) ----------------------

// The bytes in the order bytes_to_unicode() lists them: the printable ones
// ('!'..'~', '¡'..'¬', '®'..'ÿ') map to themselves, the others to 256 + n.
struct ByteSymbols {
  std::array<int, 256> order{};           // byte at position i of the listing
  std::array<std::string, 256> symbol{};  // UTF-8 of the symbol for byte b
  ByteSymbols() {
    std::array<bool, 256> printable{};
    int pos = 0;
    auto add_range = [&](int first, int last) {
      for (int b = first; b <= last; ++b) printable[b] = true, order[pos++] = b;
    };
    add_range('!', '~');
    add_range(0xA1, 0xAC);
    add_range(0xAE, 0xFF);
    for (int b = 0; b < 256; ++b)
      if (printable[b]) append_utf8(static_cast<char32_t>(b), symbol[b]);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      if (printable[b]) continue;
      order[pos++] = b;
      append_utf8(static_cast<char32_t>(256 + extra++), symbol[b]);
    }
  }
};

const ByteSymbols& byte_symbols() {
  static const ByteSymbols table;
  return table;
}

// ---- normalisation: NFC, whitespace runs -> " ", lower-case ------------------

constexpr char32_t kHangulS = 0xAC00, kHangulL = 0x1100, kHangulV = 0x1161, kHangulT = 0x11A7;
constexpr int kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr int kHangulNCount = kHangulVCount * kHangulTCount, kHangulSCount = 11172;

void decompose(char32_t c, std::u32string& out) {
  if (c >= kHangulS && c < kHangulS + kHangulSCount) {  // UAX #15 Hangul decomposition
    const int s = static_cast<int>(c - kHangulS);
    out.push_back(kHangulL + s / kHangulNCount);
    out.push_back(kHangulV + (s % kHangulNCount) / kHangulTCount);
    if (s % kHangulTCount != 0) out.push_back(kHangulT + s % kHangulTCount);
    return;
  }
  char32_t first = 0, second = 0;
  if (!unicode::canonical_decomposition(c, &first, &second)) {
    out.push_back(c);
    return;
  }
  decompose(first, out);
  if (second != 0) decompose(second, out);
}

char32_t compose(char32_t a, char32_t b) {
  if (a >= kHangulL && a < kHangulL + kHangulLCount && b >= kHangulV &&
      b < kHangulV + kHangulVCount)
    return kHangulS + ((a - kHangulL) * kHangulVCount + (b - kHangulV)) * kHangulTCount;
  if (a >= kHangulS && a < kHangulS + kHangulSCount && (a - kHangulS) % kHangulTCount == 0 &&
      b > kHangulT && b < kHangulT + kHangulTCount)
    return a + (b - kHangulT);
  return unicode::primary_composite(a, b);
}

// Unicode normalisation form C (UAX #15: canonical decomposition, canonical
// ordering, canonical composition), as the `unicode-normalization` crate
// behind tokenizers' normalizers.NFC computes it.
std::u32string nfc(const std::u32string& text) {
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; })) return text;
  std::u32string d;
  d.reserve(text.size());
  for (char32_t c : text) decompose(c, d);
  // Canonical ordering: stable sort of every run of non-starters by class.
  for (size_t i = 0; i < d.size();) {
    if (unicode::combining_class(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && unicode::combining_class(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i),
                     d.begin() + static_cast<std::ptrdiff_t>(j), [](char32_t a, char32_t b) {
                       return unicode::combining_class(a) < unicode::combining_class(b);
                     });
    i = j;
  }
  if (d.empty()) return d;
  // Canonical composition (the UAX #15 sample algorithm).
  std::u32string out = d;
  size_t starter_pos = 0, out_pos = 1;
  char32_t starter = d[0];
  int last_class = unicode::combining_class(starter) == 0 ? 0 : 256;
  for (size_t i = 1; i < d.size(); ++i) {
    const char32_t c = d[i];
    const int c_class = unicode::combining_class(c);
    const char32_t composite = compose(starter, c);
    if (composite != 0 && (last_class < c_class || last_class == 0)) {
      out[starter_pos] = composite;
      starter = composite;
      continue;
    }
    if (c_class == 0) {
      starter_pos = out_pos;
      starter = c;
    }
    last_class = c_class;
    out[out_pos++] = c;
  }
  out.resize(out_pos);
  return out;
}

// normalizers.Sequence([NFC(), Replace(Regex(r"\s+"), " "), Lowercase()]) from
// transformers' CLIP tokenizer (tokenization_clip.py, tokenizers backend).
std::u32string normalize(const std::u32string& text) {
  const std::u32string composed = nfc(text);
  std::u32string out;
  out.reserve(composed.size());
  for (size_t i = 0; i < composed.size();) {
    if (unicode::is_white_space(composed[i])) {
      out.push_back(U' ');
      while (i < composed.size() && unicode::is_white_space(composed[i])) ++i;
      continue;
    }
    unicode::append_lower(composed[i++], out);
  }
  return out;
}

// ---- pre-tokenisation: the CLIP split regex ------------------------------------

bool starts_with_at(const std::u32string& s, size_t i, const std::u32string& prefix) {
  return s.compare(i, prefix.size(), prefix) == 0;
}

// Matches of
//   <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// scanned left to right with the alternatives tried in order (Oniguruma's
// leftmost-first semantics); text between matches (only whitespace can be
// left over) is dropped, as pre_tokenizers.Split(behavior="removed", invert=True) does.
std::vector<std::u32string> pre_tokenize(const std::u32string& s) {
  static const std::u32string kLiterals[] = {
      U"<|startoftext|>", U"<|endoftext|>", U"'s", U"'t", U"'re", U"'ve", U"'m", U"'ll", U"'d"};
  std::vector<std::u32string> words;
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const char32_t c = s[i];
    if (unicode::is_white_space(c)) {
      ++i;
      continue;
    }
    const std::u32string* literal = nullptr;
    for (const auto& lit : kLiterals) {
      if (starts_with_at(s, i, lit)) {
        literal = &lit;
        break;
      }
    }
    size_t j = i + 1;
    if (literal) {
      j = i + literal->size();
    } else if (unicode::is_letter(c)) {
      while (j < n && unicode::is_letter(s[j])) ++j;
    } else if (unicode::is_number(c)) {
      // a single digit per match
    } else {
      while (j < n && !unicode::is_white_space(s[j]) && !unicode::is_letter(s[j]) &&
             !unicode::is_number(s[j]))
        ++j;
    }
    words.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return words;
}

// ---- files --------------------------------------------------------------------

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open");
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::string read_gzip_file(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw Error(path + ": cannot open");
  std::string out;
  std::array<char, 1 << 16> buf{};
  int n = 0;
  while ((n = gzread(file, buf.data(), static_cast<unsigned>(buf.size()))) > 0)
    out.append(buf.data(), static_cast<size_t>(n));
  int err = Z_OK;
  const char* message = gzerror(file, &err);
  const std::string error_text = message ? message : "";
  gzclose(file);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END))
    throw Error(path + ": cannot decompress (" + error_text + ")");
  return out;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream in(text);
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

// "a b" -> {"a", "b"}; throws on anything but two space-separated symbols.
std::pair<std::string, std::string> parse_merge(const std::string& line, const std::string& path,
                                                size_t line_number) {
  std::istringstream in(line);
  std::string a, b, extra;
  if (!(in >> a >> b) || (in >> extra))
    throw Error(path + ":" + std::to_string(line_number) +
                ": expected a merge \"left right\", found \"" + line + "\"");
  return {a, b};
}

TokenizerConfig config_beside(const fs::path& dir, const TokenizerConfig& fallback) {
  const fs::path file = dir / "tokenizer_config.json";
  if (!fs::exists(file)) return fallback;
  return TokenizerConfig::from_json(read_json_file(file.string()));
}

// The merges of CLIP's SimpleTokenizer: lines[1 : 49152 - 256 - 2 + 1].
constexpr size_t kOpenAIMergeEnd = 49152 - 256 - 2 + 1;

}  // namespace

// ---- CLIPTokenizer ----------------------------------------------------------------

CLIPTokenizer::CLIPTokenizer(std::unordered_map<std::string, int64_t> vocab,
                             std::vector<std::pair<std::string, std::string>> merges,
                             TokenizerConfig config)
    : vocab_(std::move(vocab)), config_(std::move(config)) {
  if (config_.model_max_length < 2)
    throw Error("tokenizer: model_max_length must be >= 2 (room for bos and eos), found " +
                std::to_string(config_.model_max_length));
  // tokenizers' BPE builder rejects merges whose parts or result are not in the vocabulary.
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& [a, b] = merges[i];
    for (const std::string& piece : {a, b, a + b}) {
      if (!vocab_.count(piece))
        throw Error("tokenizer: merge " + std::to_string(i) + " (\"" + a + " " + b + "\") uses \"" +
                    piece + "\", which is not in the vocabulary");
    }
    ranks_.emplace(merges[i], static_cast<int>(i));  // the first occurrence keeps its rank
  }
  bos_id_ = token_id(config_.bos_token);
  eos_id_ = token_id(config_.eos_token);
  pad_id_ = token_id(config_.pad_token);
  // transformers registers bos/eos/pad/unk as special added tokens: written in a
  // prompt they are matched before normalisation and kept as single ids.
  for (const std::string* token :
       {&config_.bos_token, &config_.eos_token, &config_.pad_token, &config_.unk_token}) {
    auto it = vocab_.find(*token);
    if (token->empty() || it == vocab_.end()) continue;
    if (std::none_of(special_tokens_.begin(), special_tokens_.end(),
                     [&](const auto& s) { return s.first == *token; }))
      special_tokens_.emplace_back(*token, it->second);
  }
  auto unk = vocab_.find(config_.unk_token);
  unk_id_ = unk == vocab_.end() ? -1 : unk->second;
}

int64_t CLIPTokenizer::token_id(const std::string& token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end())
    throw Error("tokenizer: token \"" + token + "\" is not in the vocabulary (" +
                std::to_string(vocab_.size()) + " entries)");
  return it->second;
}

// Byte-level BPE of one pre-token, following tokenizers' BPE model with
// end_of_word_suffix "</w>" (and CLIP's SimpleTokenizer.bpe): the lowest-ranked
// adjacent pair is merged everywhere, left to right, until no pair has a rank.
std::vector<std::string> CLIPTokenizer::bpe(const std::string& word) const {
  const auto& bytes = byte_symbols();
  std::vector<std::string> symbols;
  symbols.reserve(word.size());
  for (unsigned char b : word) symbols.push_back(bytes.symbol[b]);
  if (symbols.empty()) return symbols;
  symbols.back() += kEndOfWord;
  while (symbols.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    const std::pair<std::string, std::string>* best = nullptr;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = ranks_.find({symbols[i], symbols[i + 1]});
      if (it != ranks_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = &it->first;
      }
    }
    if (!best) break;
    std::vector<std::string> merged;
    merged.reserve(symbols.size());
    for (size_t i = 0; i < symbols.size();) {
      if (i + 1 < symbols.size() && symbols[i] == best->first && symbols[i + 1] == best->second) {
        merged.push_back(symbols[i] + symbols[i + 1]);
        i += 2;
      } else {
        merged.push_back(symbols[i++]);
      }
    }
    symbols.swap(merged);
  }
  return symbols;
}

void CLIPTokenizer::encode_segment(const std::string& text, std::vector<int64_t>& ids) const {
  for (const std::u32string& word : pre_tokenize(normalize(decode_utf8(text)))) {
    std::string utf8;
    for (char32_t c : word) append_utf8(c, utf8);
    for (const std::string& symbol : bpe(utf8)) {
      auto it = vocab_.find(symbol);
      if (it != vocab_.end()) {
        ids.push_back(it->second);
      } else if (unk_id_ >= 0) {
        ids.push_back(unk_id_);
      } else {
        throw Error("tokenizer: symbol \"" + symbol + "\" is not in the vocabulary and there " +
                    "is no unk token");
      }
    }
  }
}

std::vector<int64_t> CLIPTokenizer::encode(const std::string& text) const {
  // Special tokens are split out of the raw text first (leftmost, longest
  // match, as tokenizers' AddedVocabulary does); the pieces between them go
  // through normalisation, pre-tokenisation and BPE.
  std::vector<int64_t> ids;
  size_t segment_start = 0;
  for (size_t i = 0; i < text.size();) {
    const std::pair<std::string, int64_t>* match = nullptr;
    for (const auto& special : special_tokens_) {
      if (text.compare(i, special.first.size(), special.first) == 0 &&
          (!match || special.first.size() > match->first.size()))
        match = &special;
    }
    if (!match) {
      ++i;
      continue;
    }
    encode_segment(text.substr(segment_start, i - segment_start), ids);
    ids.push_back(match->second);
    i += match->first.size();
    segment_start = i;
  }
  encode_segment(text.substr(segment_start), ids);
  return ids;
}

// transformers' tokenizer(text, padding="max_length", max_length=77,
// truncation=True): RobertaProcessing adds bos/eos around the ids truncated to
// max_length - 2, then padding with the pad token.
std::vector<int64_t> CLIPTokenizer::encode_padded(const std::string& text) const {
  const size_t max_length = static_cast<size_t>(config_.model_max_length);
  std::vector<int64_t> ids = encode(text);
  if (ids.size() > max_length - 2) ids.resize(max_length - 2);
  std::vector<int64_t> out;
  out.reserve(max_length);
  out.push_back(bos_id_);
  out.insert(out.end(), ids.begin(), ids.end());
  out.push_back(eos_id_);
  out.resize(max_length, pad_id_);
  return out;
}

std::unique_ptr<CLIPTokenizer> CLIPTokenizer::from_files(const std::string& vocab_json,
                                                         const std::string& merges_txt,
                                                         const TokenizerConfig& config) {
  const nlohmann::json j = read_json_file(vocab_json);
  if (!j.is_object()) throw Error(vocab_json + ": expected a JSON object of token -> id");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_number_integer())
      throw Error(vocab_json + ": id of \"" + it.key() + "\" is not an integer");
    vocab.emplace(it.key(), it.value().get<int64_t>());
  }
  std::vector<std::pair<std::string, std::string>> merges;
  const auto lines = split_lines(read_text_file(merges_txt));
  for (size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty() || (i == 0 && lines[i].rfind("#version", 0) == 0)) continue;
    merges.push_back(parse_merge(lines[i], merges_txt, i + 1));
  }
  const TokenizerConfig cfg = config_beside(fs::path(vocab_json).parent_path(), config);
  try {
    return std::make_unique<CLIPTokenizer>(std::move(vocab), std::move(merges), cfg);
  } catch (const Error& e) {
    throw Error(vocab_json + " + " + merges_txt + ": " + e.what());
  }
}

// CLIP's SimpleTokenizer (openai/CLIP simple_tokenizer.py): the vocabulary is
// the 256 byte symbols, the same with "</w>", the joined merges, then
// <|startoftext|> and <|endoftext|>; ids are positions in that list.
std::unique_ptr<CLIPTokenizer> CLIPTokenizer::from_bpe_gz(const std::string& path,
                                                          const TokenizerConfig& config) {
  const auto lines = split_lines(read_gzip_file(path));
  std::vector<std::pair<std::string, std::string>> merges;
  for (size_t i = 1; i < lines.size() && i < kOpenAIMergeEnd; ++i) {
    if (lines[i].empty()) continue;
    merges.push_back(parse_merge(lines[i], path, i + 1));
  }
  if (merges.empty()) throw Error(path + ": no BPE merges found");
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(512 + merges.size() + 2);
  const auto& bytes = byte_symbols();
  int64_t next = 0;
  auto add = [&](const std::string& token) { vocab.emplace(token, next++); };
  for (int b : bytes.order) add(bytes.symbol[b]);
  for (int b : bytes.order) add(bytes.symbol[b] + kEndOfWord);
  for (const auto& [a, b] : merges) add(a + b);
  add("<|startoftext|>");
  add("<|endoftext|>");
  const TokenizerConfig cfg = config_beside(fs::path(path).parent_path(), config);
  try {
    return std::make_unique<CLIPTokenizer>(std::move(vocab), std::move(merges), cfg);
  } catch (const Error& e) {
    throw Error(path + ": " + e.what());
  }
}

std::unique_ptr<CLIPTokenizer> CLIPTokenizer::from_path(const std::string& path,
                                                        const TokenizerConfig& config) {
  const fs::path p(path);
  if (fs::is_regular_file(p)) return from_bpe_gz(path, config);
  std::vector<std::string> looked_for;
  for (const fs::path& dir : {p, p / "tokenizer"}) {
    const fs::path vocab = dir / "vocab.json", merges = dir / "merges.txt";
    const fs::path gz = dir / "bpe_simple_vocab_16e6.txt.gz";
    if (fs::is_regular_file(vocab) && fs::is_regular_file(merges))
      return from_files(vocab.string(), merges.string(), config);
    if (fs::is_regular_file(gz)) return from_bpe_gz(gz.string(), config);
    looked_for.push_back(vocab.string() + " + " + merges.string());
    looked_for.push_back(gz.string());
  }
  std::string message = "no CLIP tokenizer files found at " + path + " (looked for ";
  for (size_t i = 0; i < looked_for.size(); ++i) message += (i ? ", " : "") + looked_for[i];
  throw Error(message + ")");
}

void CLIPTokenizer::write_minimal_vocab(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create folder (" + ec.message() + ")");
  const auto& bytes = byte_symbols();
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  int64_t next = 0;
  for (int b : bytes.order) vocab[bytes.symbol[b]] = next++;
  for (int b : bytes.order) vocab[bytes.symbol[b] + kEndOfWord] = next++;
  // A few common English merges so that the BPE path is exercised.
  const std::pair<const char*, const char*> merges[] = {
      {"t", "h"},     {"th", "e</w>"}, {"a", "n"},    {"an", "d</w>"},
      {"o", "f</w>"}, {"i", "n"},      {"e", "r</w>"}};
  for (const auto& [a, b] : merges) vocab[std::string(a) + b] = next++;
  vocab["<|startoftext|>"] = next++;
  vocab["<|endoftext|>"] = next++;

  auto write = [&](const std::string& name, const std::string& text) {
    const std::string file = (fs::path(dir) / name).string();
    std::ofstream out(file, std::ios::binary);
    out << text;
    if (!out) throw Error(file + ": cannot write");
  };
  write("vocab.json", vocab.dump() + "\n");
  std::string merges_text = "#version: 0.2\n";
  for (const auto& [a, b] : merges) merges_text += std::string(a) + " " + b + "\n";
  write("merges.txt", merges_text);
  write("tokenizer_config.json", TokenizerConfig().to_json().dump(2) + "\n");
}

}  // namespace sdgen
