// libFuzzer target: the native SentencePiece reader and BPE encoder
// (src/tokenizer_sentencepiece.cpp). Every input is used twice:
//  - as text, through a caption model that sdgen-spm trained
//    (fuzz/data/captions-spiece.model, max length 32, lower-casing on):
//    encode_padded must give exactly 32 ids inside the vocabulary, bos first,
//    and never throw;
//  - as the bytes of a .model file: loading may throw sdgen::Error only, and a
//    model that loads must encode the input and a few fixed strings into ids
//    inside its vocabulary without throwing.
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "sdgen/error.h"
#include "sdgen/tokenizer.h"

namespace {

std::unique_ptr<sdgen::SentencePieceTokenizer> captions;

void check(const sdgen::SentencePieceTokenizer& tok, const std::string& text) {
  const auto ids = tok.encode_padded(text);
  if (ids.size() != static_cast<size_t>(tok.max_length()) || ids[0] != tok.bos_id()) std::abort();
  for (int64_t id : ids)
    if (id < 0 || static_cast<size_t>(id) >= tok.vocab_size()) std::abort();
  for (int64_t id : tok.encode(text))
    if (id < 0 || static_cast<size_t>(id) >= tok.vocab_size()) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::ifstream in(SDGEN_FUZZ_SPIECE_MODEL, std::ios::binary);
  std::stringstream bytes;
  bytes << in.rdbuf();
  sdgen::TokenizerConfig config;
  config.bos_token = "<s>";
  config.eos_token = "</s>";
  config.pad_token = "<pad>";
  config.unk_token = "<unk>";
  config.model_max_length = 32;
  captions = sdgen::SentencePieceTokenizer::from_bytes(bytes.str(), config, /*lower_case=*/true,
                                                       SDGEN_FUZZ_SPIECE_MODEL);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  check(*captions, input);

  std::unique_ptr<sdgen::SentencePieceTokenizer> model;
  try {
    model = sdgen::SentencePieceTokenizer::from_bytes(input, {}, size % 2 == 0, "input");
  } catch (const sdgen::Error&) {
    return 0;
  }
  for (const char* text :
       {"", " ", "a red circle", "A  Small\tRED star", "\xFF\xC3(", "\xE2\x96\x81"})
    check(*model, text);
  check(*model, input);
  return 0;
}
