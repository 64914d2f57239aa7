#pragma once

// Tokenizers turn a prompt into a fixed-length row of token ids for the text
// encoder. CLIPTokenizer follows transformers' CLIPTokenizer (tokenizers
// backend): NFC, whitespace runs -> one space, lower-case, the CLIP
// pre-tokenisation regex, byte-level BPE with "</w>" word ends, special tokens
// written in the text kept as single tokens.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sdgen/config.h"

namespace sdgen {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` without start/end tokens, padding or truncation.
  virtual std::vector<int64_t> encode(const std::string& text) const = 0;
  // [bos] + ids + [eos], truncated to max_length (keeping eos last) and padded
  // with the pad token to exactly max_length, as the SD pipelines call it.
  virtual std::vector<int64_t> encode_padded(const std::string& text) const = 0;
  virtual int max_length() const = 0;
};

class CLIPTokenizer : public Tokenizer {
 public:
  // vocab: token string -> id; merges: ranked pairs (rank = index).
  CLIPTokenizer(std::unordered_map<std::string, int64_t> vocab,
                std::vector<std::pair<std::string, std::string>> merges, TokenizerConfig config);

  // HF layout: vocab.json + merges.txt (+ optional tokenizer_config.json in the same folder).
  // In all loaders a tokenizer_config.json beside the vocabulary takes precedence;
  // `config` is used when there is none.
  static std::unique_ptr<CLIPTokenizer> from_files(const std::string& vocab_json,
                                                   const std::string& merges_txt,
                                                   const TokenizerConfig& config);
  // OpenAI layout: bpe_simple_vocab_16e6.txt.gz (vocabulary built as CLIP's SimpleTokenizer does).
  static std::unique_ptr<CLIPTokenizer> from_bpe_gz(const std::string& path,
                                                    const TokenizerConfig& config);
  // Finds tokenizer files in `path` (a folder holding vocab.json + merges.txt or
  // bpe_simple_vocab_16e6.txt.gz, or the .gz file itself); throws Error naming
  // what was looked for.
  static std::unique_ptr<CLIPTokenizer> from_path(const std::string& path,
                                                  const TokenizerConfig& config);

  // Writes a minimal byte-level vocabulary (every byte alone and as a word end,
  // the special tokens, a handful of merges) as vocab.json + merges.txt into
  // `dir`; used for the project's own tiny random models.
  static void write_minimal_vocab(const std::string& dir);

  std::vector<int64_t> encode(const std::string& text) const override;
  std::vector<int64_t> encode_padded(const std::string& text) const override;
  int max_length() const override { return config_.model_max_length; }
  int64_t token_id(const std::string& token) const;  // throws Error if absent
  size_t vocab_size() const { return vocab_.size(); }

 private:
  std::vector<std::string> bpe(const std::string& word) const;
  // Normalises, pre-tokenises and BPE-encodes text holding no special token.
  void encode_segment(const std::string& text, std::vector<int64_t>& ids) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::map<std::pair<std::string, std::string>, int> ranks_;
  TokenizerConfig config_;
  int64_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = -1;
  // bos/eos/pad/unk strings (deduplicated) and their ids, matched literally in prompts.
  std::vector<std::pair<std::string, int64_t>> special_tokens_;
};

// A SentencePiece BPE model (a `.model` file), the tokenizer of the models
// sdgen trains itself (tools/spm/sdgen_spm.cpp trains them). The file is read
// natively, not with libsentencepiece: Debian's copy bundles a protobuf that
// crashes any process that also loads libtorch. Supported: BPE models with the
// identity normalisation (sentencepiece's whitespace handling: a dummy prefix,
// runs of spaces collapsed, U+2581 for spaces), as sdgen-spm trains them; with
// "do_lower_case": true in tokenizer_config.json, ASCII letters are lower-cased
// and ASCII whitespace becomes spaces first (as sdgen-spm does before
// training). Special tokens written in a prompt are plain text.
class SentencePieceTokenizer : public Tokenizer {
 public:
  // Loads `model_path` (spiece.model / tokenizer.model). bos/eos/pad/unk are
  // the model's pieces named by the config's tokens, else the model's own
  // bos/eos/pad/unk. As for CLIPTokenizer, a tokenizer_config.json beside
  // the model takes precedence over `config`. Throws Error naming the file.
  static std::unique_ptr<SentencePieceTokenizer> from_file(const std::string& model_path,
                                                           const TokenizerConfig& config);
  // The same from the bytes of a .model file; `name` appears in errors.
  static std::unique_ptr<SentencePieceTokenizer> from_bytes(const std::string& model,
                                                            const TokenizerConfig& config,
                                                            bool lower_case,
                                                            const std::string& name);
  // The SentencePiece model in folder `dir` (spiece.model, else
  // tokenizer.model), or "" when there is none.
  static std::string find_model(const std::string& dir);
  ~SentencePieceTokenizer() override;

  std::vector<int64_t> encode(const std::string& text) const override;
  std::vector<int64_t> encode_padded(const std::string& text) const override;
  int max_length() const override;
  // Text of `ids` (bos/eos/pad dropped); throws Error on an id outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids) const;
  size_t vocab_size() const;
  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t pad_id() const;
  int64_t unk_id() const;

 private:
  struct Impl;
  explicit SentencePieceTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The tokenizer at `path`: a folder (or its tokenizer/ subfolder) holding a
// SentencePiece model or a `.model` file gives a SentencePieceTokenizer,
// anything else CLIPTokenizer::from_path. Throws Error naming what was looked for.
std::unique_ptr<Tokenizer> tokenizer_from_path(const std::string& path,
                                               const TokenizerConfig& config);

}  // namespace sdgen
