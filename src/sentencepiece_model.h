#pragma once

// Private to SentencePieceTokenizer (tokenizer_sentencepiece.cpp): the
// fields of sentencepiece's ModelProto (src/sentencepiece_model.proto
// upstream, 0.1.97) that its BPE encoder needs, read from a serialized .model
// file by a bounds-checked protobuf wire-format reader. libtorch-free (fuzzed
// through fuzz_tokenizer).

#include <string>
#include <vector>

namespace sdgen::sentencepiece_model {

// ModelProto.SentencePiece.Type
enum PieceType {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

struct Piece {
  std::string text;
  float score = 0;
  int type = kNormal;
};

// The ModelProto fields the BPE encoder needs (field numbers from
// sentencepiece_model.proto; defaults as declared there).
struct ModelProto {
  std::vector<Piece> pieces;
  // TrainerSpec
  int model_type = 1;  // UNIGRAM=1, BPE=2, WORD=3, CHAR=4
  bool treat_whitespace_as_suffix = false;
  bool byte_fallback = false;
  std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
  // NormalizerSpec
  std::string normalizer_name;
  bool has_charsmap = false, has_rule_tsv = false;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

// Parses a serialized ModelProto; a malformed message throws Error.
ModelProto parse_model(const std::string& bytes);

}  // namespace sdgen::sentencepiece_model
