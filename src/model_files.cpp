#include "sdgen/model_files.h"

#include <cctype>
#include <cstdlib>
#include <filesystem>

#include "sdgen/error.h"
#include "sdgen/model.h"
#include "sdgen/tokenizer.h"
#include "sdgen/torch_checkpoint.h"

namespace fs = std::filesystem;

namespace sdgen {

namespace {

// CLIP tokenizer files (vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz)
// or a SentencePiece model in `dir`.
bool has_tokenizer_files(const fs::path& dir) {
  std::error_code ec;
  return (fs::exists(dir / "vocab.json", ec) && fs::exists(dir / "merges.txt", ec)) ||
         fs::exists(dir / "bpe_simple_vocab_16e6.txt.gz", ec) ||
         !SentencePieceTokenizer::find_model(dir.string()).empty();
}

ComponentFiles component(const fs::path& weights, const fs::path& config_root, const char* folder) {
  return {weights.string(),
          config_root.empty() ? std::string() : (config_root / folder / "config.json").string()};
}

}  // namespace

const char* layout_name(ModelLayout layout) {
  return layout == ModelLayout::diffusers ? "diffusers" : "single-file";
}

ModelFiles resolve_model_files(const LoadOptions& options) {
  ModelFiles files;
  files.model_path = options.model_path;
  const fs::path path(options.model_path);
  std::error_code ec;
  if (options.model_path.empty()) throw Error("no model given (--model PATH)");
  if (!fs::exists(path, ec))
    throw Error(options.model_path +
                ": model not found (give a diffusers folder or a "
                ".safetensors checkpoint)");

  // Configs (and the scheduler config and a tokenizer) come from --config when
  // given, else from a diffusers folder itself; a single file's are inferred.
  fs::path config_root;
  std::vector<fs::path> tokenizer_dirs;
  if (fs::is_directory(path, ec)) {
    if (!fs::exists(path / "model_index.json"))
      throw Error(path.string() +
                  " is a folder without model_index.json, so not a diffusers model; give the "
                  "folder that holds model_index.json, unet/, vae/, text_encoder/, or a "
                  ".safetensors file");
    files.layout = ModelLayout::diffusers;
    files.model_index = (path / "model_index.json").string();
    config_root = options.config_dir.empty() ? path : fs::path(options.config_dir);
    files.text_encoder =
        component(path / "text_encoder" / "model.safetensors", config_root, "text_encoder");
    files.text_encoder_2 =
        component(path / "text_encoder_2" / "model.safetensors", config_root, "text_encoder_2");
    files.unet =
        component(path / "unet" / "diffusion_pytorch_model.safetensors", config_root, "unet");
    files.vae = component(path / "vae" / "diffusion_pytorch_model.safetensors", config_root, "vae");
    tokenizer_dirs = {config_root / "tokenizer", path / "tokenizer"};
    for (const auto& d : {config_root / "tokenizer_2", path / "tokenizer_2"})
      if (files.tokenizer_2.empty() && has_tokenizer_files(d)) files.tokenizer_2 = d.string();
  } else {
    if (is_pickle_file_name(path.string()))
      throw Error(pickle_refusal(path.string(), "checkpoints"));
    files.layout = ModelLayout::single_file;
    if (!options.config_dir.empty()) {
      config_root = options.config_dir;
      tokenizer_dirs.push_back(config_root / "tokenizer");
    }
    files.text_encoder = component(path, config_root, "text_encoder");
    files.text_encoder_2 = component(path, config_root, "text_encoder_2");
    files.unet = component(path, config_root, "unet");
    if (!config_root.empty() && has_tokenizer_files(config_root / "tokenizer_2"))
      files.tokenizer_2 = (config_root / "tokenizer_2").string();
    files.vae = component(path, config_root, "vae");
    tokenizer_dirs.push_back(path.parent_path() / "tokenizer");
  }
  if (!config_root.empty()) {
    const fs::path scheduler = config_root / "scheduler" / "scheduler_config.json";
    if (fs::exists(scheduler, ec)) files.scheduler_config = scheduler.string();
  }

  if (!options.tokenizer_path.empty()) {
    files.tokenizer = options.tokenizer_path;
    files.tokenizer_given = true;
    return files;
  }
  for (const auto& d : tokenizer_dirs) files.tokenizer_candidates.push_back(d.string());
  for (const auto& d : tokenizer_search_paths()) files.tokenizer_candidates.push_back(d);
  for (const auto& d : files.tokenizer_candidates) {
    if (has_tokenizer_files(d)) {
      files.tokenizer = d;
      break;
    }
  }
  return files;
}

std::vector<std::string> tokenizer_search_paths() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("SDGEN_TOKENIZER")) out.push_back(env);
  const char* home = std::getenv("HOME");
  if (const char* xdg = std::getenv("XDG_DATA_HOME")) {
    out.push_back(std::string(xdg) + "/sdgen/clip");
  } else if (home) {
    out.push_back(std::string(home) + "/.local/share/sdgen/clip");
  }
  out.push_back("/usr/local/share/sdgen/clip");
  out.push_back("/usr/share/sdgen/clip");
  // A Hugging Face cache that already holds the CLIP tokenizer SD1.x uses.
  if (home) {
    const fs::path snaps =
        fs::path(home) / ".cache/huggingface/hub/models--openai--clip-vit-large-patch14/snapshots";
    std::error_code ec;
    if (fs::is_directory(snaps, ec))
      for (const auto& entry : fs::directory_iterator(snaps, ec))
        out.push_back(entry.path().string());
  }
  return out;
}

}  // namespace sdgen
