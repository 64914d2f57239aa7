#pragma once

// Where a model's files are, for both layouts users have (a diffusers folder
// or a single .safetensors checkpoint), worked out once for everything that
// reads them: load_model, the memory estimate made before loading
// (inspect_model_files) and `sdgen --info`. Only paths are resolved here:
// nothing is read but folder listings, so a missing or broken file is
// reported by whoever reads it, with the message it always had.

#include <string>
#include <vector>

namespace sdgen {

struct LoadOptions;

enum class ModelLayout { diffusers, single_file };

// "diffusers" or "single-file" (StableDiffusionModel::layout).
const char* layout_name(ModelLayout layout);

struct ComponentFiles {
  // The .safetensors file its weights are read from: <folder>/<part>/model.safetensors
  // (text encoder) or diffusion_pytorch_model.safetensors, which may be
  // missing; the checkpoint itself for a single file.
  std::string weights;
  // Its config.json (from --config, else the diffusers folder); "" when the
  // config is inferred from the checkpoint's tensor shapes.
  std::string config;
};

struct ModelFiles {
  ModelLayout layout = ModelLayout::diffusers;
  std::string model_path;   // as given
  std::string model_index;  // diffusers: <folder>/model_index.json; "" for a single file
  ComponentFiles text_encoder;
  // SDXL's second text encoder (text_encoder_2/ of a diffusers folder, the
  // checkpoint itself for a single file); read only for SDXL models.
  ComponentFiles text_encoder_2;
  ComponentFiles unet;
  ComponentFiles vae;
  // scheduler/scheduler_config.json of the config folder when it exists;
  // "" when the built-in SD config is used.
  std::string scheduler_config;
  // The tokenizer load_model uses: --tokenizer as given (tokenizer_given),
  // else the first of tokenizer_candidates holding tokenizer files; "" when
  // none does.
  std::string tokenizer;
  bool tokenizer_given = false;
  // The folders looked in, in load order: the config folder's and the
  // model's tokenizer/, then tokenizer_search_paths().
  std::vector<std::string> tokenizer_candidates;
  // SDXL's second tokenizer: the first folder of the config folder's and the
  // model's tokenizer_2/ holding tokenizer files; "" = the first tokenizer's
  // files, padded with "!" as SDXL's tokenizer_2 is.
  std::string tokenizer_2;
};

// Throws Error when there is no model to resolve: an empty path, a path that
// does not exist, a folder without model_index.json, or a pickle checkpoint
// (.ckpt/.pt/.pth/.bin), with the messages load_model gives.
ModelFiles resolve_model_files(const LoadOptions& options);

// Places looked at for CLIP tokenizer files when the model has none, in order.
std::vector<std::string> tokenizer_search_paths();

}  // namespace sdgen
