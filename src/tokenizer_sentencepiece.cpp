// SentencePieceTokenizer and tokenizer_from_path (include/sdgen/tokenizer.h).
//
// A native reader of sentencepiece's .model file (a serialized ModelProto,
// src/sentencepiece_model.proto upstream) and its BPE encoder, following
// sentencepiece 0.1.97: normalizer.cc (Normalizer::Normalize without a
// precompiled charsmap), bpe_model.cc (Model::SampleEncode without dropout),
// model_interface.cc (PieceToId) and sentencepiece_processor.cc (consecutive
// unknown pieces merged into one). libsentencepiece itself cannot be linked
// here (tokenizer.h says why); tests/test_tokenizer.cpp checks the ids against
// it through tools/spm (sdgen-spm encode).

#include <cstring>
#include <filesystem>
#include <fstream>
#include <queue>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sdgen/error.h"
#include "sdgen/tokenizer.h"
#include "sentencepiece_model.h"
#include "sentencepiece_text.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

constexpr const char* kModelFiles[] = {"spiece.model", "tokenizer.model"};
constexpr const char* kSpaceSymbol = "\xE2\x96\x81";  // U+2581, sentencepiece's space
constexpr size_t kSpaceSymbolSize = 3;
constexpr const char* kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

using namespace sentencepiece_model;

// ---- UTF-8 as sentencepiece's string_util::DecodeUTF8 reads it --------------------

bool is_trail(unsigned char b) { return (b & 0xC0) == 0x80; }
bool valid_codepoint(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

// Length of the valid UTF-8 character at `s`, or 0 when it is malformed.
size_t utf8_char_length(const unsigned char* s, size_t len) {
  if (s[0] < 0x80) return 1;
  if (len >= 2 && (s[0] & 0xE0) == 0xC0) {
    const uint32_t cp = ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    return is_trail(s[1]) && cp >= 0x80 && valid_codepoint(cp) ? 2 : 0;
  }
  if (len >= 3 && (s[0] & 0xF0) == 0xE0) {
    const uint32_t cp = ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    return is_trail(s[1]) && is_trail(s[2]) && cp >= 0x800 && valid_codepoint(cp) ? 3 : 0;
  }
  if (len >= 4 && (s[0] & 0xF8) == 0xF0) {
    const uint32_t cp =
        ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    return is_trail(s[1]) && is_trail(s[2]) && is_trail(s[3]) && cp >= 0x10000 &&
                   valid_codepoint(cp)
               ? 4
               : 0;
  }
  return 0;
}

// string_util::OneCharLen: the length the lead byte announces.
size_t one_char_len(unsigned char lead) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[lead >> 4]; }

// ---- files ------------------------------------------------------------------------

std::string read_binary_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open SentencePiece model");
  std::stringstream buf;
  buf << in.rdbuf();
  if (in.bad()) throw Error(path + ": cannot read SentencePiece model");
  return buf.str();
}

bool has_clip_files(const fs::path& dir) {
  std::error_code ec;
  return (fs::is_regular_file(dir / "vocab.json", ec) &&
          fs::is_regular_file(dir / "merges.txt", ec)) ||
         fs::is_regular_file(dir / "bpe_simple_vocab_16e6.txt.gz", ec);
}

}  // namespace

struct SentencePieceTokenizer::Impl {
  ModelProto model;
  std::unordered_map<std::string, int> pieces;    // normal, user-defined, unused
  std::unordered_map<std::string, int> reserved;  // control, unknown, byte
  TokenizerConfig config;
  bool lower_case = false;
  int model_unk = -1;
  int64_t bos = -1, eos = -1, pad = -1, unk = -1;

  int piece_count() const { return static_cast<int>(model.pieces.size()); }
  int type_of(int id) const { return model.pieces[static_cast<size_t>(id)].type; }

  // ModelInterface::PieceToId: reserved pieces first, else the unknown id.
  int piece_to_id(const std::string& piece) const {
    if (auto it = reserved.find(piece); it != reserved.end()) return it->second;
    if (auto it = pieces.find(piece); it != pieces.end()) return it->second;
    return model_unk;
  }
  // SentencePieceProcessor::bos_id() etc.: the named piece when it is a control symbol.
  int control_id(const std::string& piece) const {
    const int id = piece_to_id(piece);
    return id >= 0 && type_of(id) == kControl ? id : -1;
  }
  // The config's token when the model has exactly that piece, else `fallback`.
  int64_t special_id(const std::string& token, int fallback) const {
    if (!token.empty()) {
      if (auto it = reserved.find(token); it != reserved.end()) return it->second;
      if (auto it = pieces.find(token); it != pieces.end()) return it->second;
    }
    return fallback;
  }

  std::string normalize(const std::string& input) const;
  std::vector<int> encode_bpe(const std::string& normalized) const;
};

// Normalizer::Normalize with no charsmap: each UTF-8 character is copied (a
// malformed byte becomes U+FFFD), leading/trailing spaces dropped and runs of
// spaces collapsed (remove_extra_whitespaces), a space prepended
// (add_dummy_prefix) and spaces written as U+2581 (escape_whitespaces).
std::string SentencePieceTokenizer::Impl::normalize(const std::string& text) const {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  std::string out;
  if (n == 0) return out;
  if (model.remove_extra_whitespaces)
    while (i < n && s[i] == ' ') ++i;
  if (i == n) return out;
  out.reserve((n - i) * 3 + kSpaceSymbolSize);
  const std::string space = model.escape_whitespaces ? kSpaceSymbol : " ";
  if (model.add_dummy_prefix) out += space;
  bool prev_space = model.remove_extra_whitespaces;
  while (i < n) {
    const size_t len = utf8_char_length(s + i, n - i);
    if (len == 0) {
      out += kReplacementChar;
      prev_space = false;
      ++i;
    } else if (len == 1 && s[i] == ' ') {
      if (!prev_space) out += space;
      prev_space = model.remove_extra_whitespaces;
      ++i;
    } else {
      out.append(text, i, len);
      prev_space = false;
      i += len;
    }
  }
  if (model.remove_extra_whitespaces) {
    while (out.size() >= space.size() &&
           out.compare(out.size() - space.size(), space.size(), space) == 0)
      out.resize(out.size() - space.size());
  }
  return out;
}

// bpe::Model::SampleEncode (no dropout): start from single characters and
// repeatedly merge the adjacent pair whose concatenation is a piece with the
// highest score (the leftmost among equal scores), then map each symbol to
// its id (unused pieces split back into what they were merged from).
std::vector<int> SentencePieceTokenizer::Impl::encode_bpe(const std::string& normalized) const {
  struct Symbol {
    int prev, next;
    size_t begin, size;  // the symbol's bytes in `normalized`
  };
  struct Pair {
    int left, right;
    float score;
    size_t size;
  };
  // sentencepiece's SymbolPairComparator: higher score first, then smaller left.
  auto lower = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Pair, std::vector<Pair>, decltype(lower)> agenda(lower);
  std::vector<Symbol> symbols;
  std::unordered_map<std::string, std::pair<std::string, std::string>> rev_merge;
  const size_t n = normalized.size();
  for (size_t i = 0; i < n;) {
    const size_t len = std::min(n - i, one_char_len(static_cast<unsigned char>(normalized[i])));
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({index - 1, i + len < n ? index + 1 : -1, i, len});
    i += len;
  }
  if (symbols.empty()) return {};
  auto text_of = [&](int index) {
    const Symbol& sym = symbols[static_cast<size_t>(index)];
    return normalized.substr(sym.begin, sym.size);
  };
  auto maybe_add = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const Symbol& l = symbols[static_cast<size_t>(left)];
    const Symbol& r = symbols[static_cast<size_t>(right)];
    const std::string piece = normalized.substr(l.begin, l.size + r.size);
    const auto it = pieces.find(piece);
    if (it == pieces.end()) return;
    agenda.push({left, right, model.pieces[static_cast<size_t>(it->second)].score, piece.size()});
    if (type_of(it->second) == kUnused) rev_merge[piece] = {text_of(left), text_of(right)};
  };
  for (size_t i = 1; i < symbols.size(); ++i)
    maybe_add(static_cast<int>(i - 1), static_cast<int>(i));

  while (!agenda.empty()) {
    const Pair top = agenda.top();
    agenda.pop();
    Symbol& l = symbols[static_cast<size_t>(top.left)];
    Symbol& r = symbols[static_cast<size_t>(top.right)];
    // Stale: one side was merged away or has grown since the pair was queued.
    if (l.size == 0 || r.size == 0 || l.size + r.size != top.size) continue;
    l.size += r.size;
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = top.left;
    r.size = 0;
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }

  std::vector<int> ids;
  std::vector<std::string> stack;
  for (int index = 0; index != -1; index = symbols[static_cast<size_t>(index)].next) {
    stack.push_back(text_of(index));
    while (!stack.empty()) {  // resegment(), depth-first, left before right
      const std::string w = std::move(stack.back());
      stack.pop_back();
      const int id = piece_to_id(w);
      const auto split = id >= 0 && type_of(id) == kUnused ? rev_merge.find(w) : rev_merge.end();
      if (split == rev_merge.end()) {
        ids.push_back(id);
        continue;
      }
      stack.push_back(split->second.second);
      stack.push_back(split->second.first);
    }
  }
  return ids;
}

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::string SentencePieceTokenizer::find_model(const std::string& dir) {
  for (const char* name : kModelFiles) {
    const fs::path file = fs::path(dir) / name;
    std::error_code ec;
    if (fs::is_regular_file(file, ec)) return file.string();
  }
  return "";
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_bytes(
    const std::string& bytes, const TokenizerConfig& config, bool lower_case,
    const std::string& name) {
  auto impl = std::make_unique<Impl>();
  try {
    impl->model = parse_model(bytes);
  } catch (const Error& e) {
    throw Error(name + ": not a valid SentencePiece model (" + e.what() + ")");
  }
  const ModelProto& m = impl->model;
  auto unsupported = [&](const std::string& what) {
    throw Error(name + ": " + what +
                " is not supported (sdgen reads BPE models with the identity normalisation, "
                "as tools/spm/sdgen_spm.cpp trains them)");
  };
  if (m.pieces.empty()) throw Error(name + ": not a valid SentencePiece model (no pieces)");
  if (m.model_type != 2)
    unsupported("model_type " + std::to_string(m.model_type) + " (1 unigram, 3 word, 4 char)");
  if (m.has_charsmap || m.has_rule_tsv)
    unsupported("the normalisation rule '" + m.normalizer_name + "'");
  if (m.treat_whitespace_as_suffix) unsupported("treat_whitespace_as_suffix");
  if (m.byte_fallback) unsupported("byte_fallback");
  // ModelInterface::InitializePieces' checks.
  for (size_t i = 0; i < m.pieces.size(); ++i) {
    const Piece& p = m.pieces[i];
    const int id = static_cast<int>(i);
    if (p.text.empty()) throw Error(name + ": piece " + std::to_string(i) + " is empty");
    if (p.type < kNormal || p.type > kByte)
      throw Error(name + ": piece " + std::to_string(i) + " has unknown type " +
                  std::to_string(p.type));
    if (p.type == kUserDefined) unsupported("user-defined symbols");
    const bool normal = p.type == kNormal || p.type == kUnused;
    if (!(normal ? impl->pieces : impl->reserved).emplace(p.text, id).second)
      throw Error(name + ": piece \"" + p.text + "\" is defined twice");
    if (p.type == kUnknown) {
      if (impl->model_unk >= 0) throw Error(name + ": more than one unknown piece");
      impl->model_unk = id;
    }
  }
  if (impl->model_unk < 0) throw Error(name + ": the model has no unknown piece");

  impl->config = config;
  impl->lower_case = lower_case;
  const TokenizerConfig& c = impl->config;
  if (c.model_max_length < 2)
    throw Error(name + ": model_max_length must be >= 2 (room for bos and eos), found " +
                std::to_string(c.model_max_length));
  impl->bos = impl->special_id(c.bos_token, impl->control_id(m.bos_piece));
  impl->eos = impl->special_id(c.eos_token, impl->control_id(m.eos_piece));
  impl->pad = impl->special_id(c.pad_token, impl->control_id(m.pad_piece));
  impl->unk = impl->special_id(c.unk_token, impl->model_unk);
  const std::pair<const char*, int64_t> roles[] = {
      {"bos", impl->bos}, {"eos", impl->eos}, {"pad", impl->pad}};
  for (const auto& [role, id] : roles) {
    if (id < 0)
      throw Error(name + ": SentencePiece model has no " + role + " piece (train it with " + role +
                  "_id >= 0, or name one in tokenizer_config.json)");
  }
  return std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer(std::move(impl)));
}

std::unique_ptr<SentencePieceTokenizer> SentencePieceTokenizer::from_file(
    const std::string& model_path, const TokenizerConfig& config) {
  std::error_code ec;
  if (!fs::is_regular_file(model_path, ec))
    throw Error(model_path + ": SentencePiece model not found");
  const std::string bytes = read_binary_file(model_path);
  // As for CLIPTokenizer: a tokenizer_config.json beside the model wins.
  TokenizerConfig cfg = config;
  bool lower_case = false;
  const fs::path json_file = fs::path(model_path).parent_path() / "tokenizer_config.json";
  if (fs::exists(json_file, ec)) {
    const nlohmann::json j = read_json_file(json_file.string());
    try {
      cfg = TokenizerConfig::from_json(j);
    } catch (const Error& e) {
      throw Error(json_file.string() + ": " + e.what());
    }
    const auto it = j.find("do_lower_case");
    lower_case = it != j.end() && it->is_boolean() && it->get<bool>();
  }
  return from_bytes(bytes, cfg, lower_case, model_path);
}

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text) const {
  const std::string normalized =
      impl_->normalize(impl_->lower_case ? prepare_sentencepiece_text(text) : text);
  std::vector<int64_t> ids;
  bool prev_unknown = false;
  for (int id : impl_->encode_bpe(normalized)) {
    // SentencePieceProcessor merges a run of unknown pieces into one.
    const bool unknown = id >= 0 && impl_->type_of(id) == kUnknown;
    if (!(unknown && prev_unknown)) ids.push_back(id);
    prev_unknown = unknown;
  }
  return ids;
}

// The same contract as CLIPTokenizer::encode_padded: [bos] + ids truncated to
// max_length - 2 + [eos], then the pad id up to exactly max_length.
std::vector<int64_t> SentencePieceTokenizer::encode_padded(const std::string& text) const {
  const size_t max_length = static_cast<size_t>(impl_->config.model_max_length);
  std::vector<int64_t> ids = encode(text);
  if (ids.size() > max_length - 2) ids.resize(max_length - 2);
  std::vector<int64_t> out;
  out.reserve(max_length);
  out.push_back(impl_->bos);
  out.insert(out.end(), ids.begin(), ids.end());
  out.push_back(impl_->eos);
  out.resize(max_length, impl_->pad);
  return out;
}

// Pieces joined, U+2581 back to spaces, the dummy prefix's space dropped;
// unknown pieces read " \u2047 " (sentencepiece's default unk_surface), control
// pieces nothing.
std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string joined;
  for (int64_t id : ids) {
    if (id < 0 || id >= impl_->piece_count())
      throw Error("SentencePiece tokenizer: id " + std::to_string(id) + " outside [0, " +
                  std::to_string(impl_->piece_count()) + ")");
    if (id == impl_->bos || id == impl_->eos || id == impl_->pad) continue;
    const int type = impl_->type_of(static_cast<int>(id));
    if (type == kControl) continue;
    joined +=
        type == kUnknown ? " \xE2\x81\x87 " : impl_->model.pieces[static_cast<size_t>(id)].text;
  }
  std::string text;
  for (size_t i = 0; i < joined.size();) {
    if (joined.compare(i, kSpaceSymbolSize, kSpaceSymbol) == 0) {
      text += ' ';
      i += kSpaceSymbolSize;
    } else {
      text += joined[i++];
    }
  }
  if (impl_->model.add_dummy_prefix && !text.empty() && text[0] == ' ') text.erase(0, 1);
  return text;
}

int SentencePieceTokenizer::max_length() const { return impl_->config.model_max_length; }
size_t SentencePieceTokenizer::vocab_size() const {
  return static_cast<size_t>(impl_->piece_count());
}
int64_t SentencePieceTokenizer::bos_id() const { return impl_->bos; }
int64_t SentencePieceTokenizer::eos_id() const { return impl_->eos; }
int64_t SentencePieceTokenizer::pad_id() const { return impl_->pad; }
int64_t SentencePieceTokenizer::unk_id() const { return impl_->unk; }

// ---- choosing the tokenizer of a folder -------------------------------------------

std::unique_ptr<Tokenizer> tokenizer_from_path(const std::string& path,
                                               const TokenizerConfig& config) {
  const fs::path p(path);
  std::error_code ec;
  if (fs::is_regular_file(p, ec)) {
    if (p.extension() == ".model") return SentencePieceTokenizer::from_file(path, config);
    return CLIPTokenizer::from_path(path, config);
  }
  if (fs::is_directory(p, ec)) {
    for (const fs::path& dir : {p, p / "tokenizer"}) {
      const std::string model = SentencePieceTokenizer::find_model(dir.string());
      if (!model.empty()) return SentencePieceTokenizer::from_file(model, config);
      if (has_clip_files(dir)) return CLIPTokenizer::from_path(dir.string(), config);
    }
  }
  try {
    return CLIPTokenizer::from_path(path, config);  // throws, naming the CLIP files
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + "; nor a SentencePiece spiece.model / tokenizer.model");
  }
}

}  // namespace sdgen
