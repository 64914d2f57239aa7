// libFuzzer target: the CLIP BPE tokenizer on arbitrary bytes (valid and
// invalid UTF-8, special tokens, long words). Two tokenizers: the real CLIP
// vocabulary when available (the tiny model's tokenizer/, $SDGEN_FUZZ_TOKENIZER,
// else the project's minimal byte-level vocabulary), which must never throw,
// and a tiny vocabulary without an unknown token (SD2-style "!" padding, 6
// tokens long), which may throw sdgen::Error only.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <unistd.h>

#include "sdgen/error.h"
#include "sdgen/tokenizer.h"

namespace {

std::unique_ptr<sdgen::CLIPTokenizer> load_clip() {
  namespace fs = std::filesystem;
  std::string dir = SDGEN_FUZZ_TOKENIZER_DIR;
  if (const char* env = std::getenv("SDGEN_FUZZ_TOKENIZER")) dir = env;
  if (!fs::exists(fs::path(dir) / "vocab.json")) {
    dir = (fs::temp_directory_path() / ("sdgen-fuzz-vocab-" + std::to_string(::getpid()))).string();
    sdgen::CLIPTokenizer::write_minimal_vocab(dir);
  }
  return sdgen::CLIPTokenizer::from_path(dir, sdgen::TokenizerConfig());
}

std::unique_ptr<sdgen::CLIPTokenizer> make_tiny() {
  std::unordered_map<std::string, int64_t> vocab;
  int64_t next = 0;
  for (char c = 'a'; c <= 'z'; ++c) {
    vocab.emplace(std::string(1, c), next++);
    vocab.emplace(std::string(1, c) + "</w>", next++);
  }
  for (const char* t : {"!", "!</w>", "th", "the</w>", "<|startoftext|>", "<|endoftext|>"})
    vocab.emplace(t, next++);
  sdgen::TokenizerConfig config;
  config.pad_token = "!";
  config.unk_token = "<unk>";  // absent: symbols outside the vocabulary are errors
  config.model_max_length = 6;
  return std::make_unique<sdgen::CLIPTokenizer>(
      std::move(vocab),
      std::vector<std::pair<std::string, std::string>>{{"t", "h"}, {"th", "e</w>"}}, config);
}

void check_padded(const sdgen::CLIPTokenizer& tok, const std::string& text) {
  const auto ids = tok.encode_padded(text);
  if (ids.size() != static_cast<size_t>(tok.max_length())) std::abort();
  for (int64_t id : ids)
    if (id < 0) std::abort();
}

std::unique_ptr<sdgen::CLIPTokenizer> clip, tiny;

}  // namespace

// Loading the 49k-entry vocabulary takes seconds under ASan: done once here,
// outside the time limit of the first input.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  clip = load_clip();
  tiny = make_tiny();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto ids = clip->encode(text);
  for (int64_t id : ids)
    if (id < 0 || static_cast<size_t>(id) >= clip->vocab_size()) std::abort();
  check_padded(*clip, text);
  try {
    check_padded(*tiny, text);
  } catch (const sdgen::Error&) {
  }
  return 0;
}
