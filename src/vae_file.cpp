// A separate VAE (--vae) in place of the checkpoint's own, as A1111's
// sd_vae.load_vae and diffusers' AutoencoderKL.from_pretrained take one:
//   - a diffusers vae/ folder: config.json + diffusion_pytorch_model.safetensors;
//   - one .safetensors file with the VAE's LDM keys (encoder.down.0.block.0...,
//     as the vae-ft-mse-840000-ema-pruned files), the same keys under
//     first_stage_model. (a whole single-file checkpoint), or diffusers keys
//     (encoder.down_blocks.0.resnets.0...).
// The architecture is the model's own VAE config unless a folder brings one:
// A1111 loads a VAE file into the checkpoint's first_stage_model.

#include "vae_file.h"

#include <cctype>
#include <filesystem>

#include "sdgen/checkpoint.h"
#include "sdgen/error.h"
#include "sdgen/safetensors.h"
#include "sdgen/torch_checkpoint.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

bool has_key_starting(const TensorMap& all, const std::string& prefix) {
  auto it = all.lower_bound(prefix);
  return it != all.end() && it->first.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

std::string separate_vae_weights_file(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) throw Error(path + ": --vae file not found");
  if (fs::is_directory(p, ec)) {
    for (const auto& dir : {p, p / "vae"}) {
      const fs::path f = dir / "diffusion_pytorch_model.safetensors";
      if (fs::exists(f, ec)) return f.string();
    }
    throw Error(path +
                ": --vae folder without diffusion_pytorch_model.safetensors (give a "
                "diffusers vae/ folder or a .safetensors file)");
  }
  if (is_pickle_file_name(path)) throw Error(pickle_refusal(path, "VAE files"));
  return p.string();
}

AutoencoderKL load_separate_vae(const std::string& path, const VAEConfig& model_config,
                                const WeightTarget& target) {
  const std::string file = separate_vae_weights_file(path);
  VAEConfig config = model_config;
  const fs::path folder_config = fs::path(file).parent_path() / "config.json";
  if (fs::is_directory(path) && fs::exists(folder_config))
    config = VAEConfig::from_json(read_json_file(folder_config.string()));
  const SafeTensorsFile f(file);
  TensorMap all = tensors_with_prefix(f, "");
  // A whole checkpoint: its first_stage_model.* part.
  if (has_key_starting(all, kLDMVAEPrefix)) all = tensors_with_prefix(f, kLDMVAEPrefix);
  TensorMap weights;
  if (has_key_starting(all, "encoder.down_blocks.") ||
      has_key_starting(all, "decoder.up_blocks.")) {
    weights = all;  // diffusers names already
  } else if (has_key_starting(all, "encoder.down.") || has_key_starting(all, "decoder.up.")) {
    TensorMap prefixed;
    for (const auto& [key, t] : all)
      if (key.rfind("loss.", 0) != 0 && key != "model_ema.decay" && key != "model_ema.num_updates")
        prefixed.emplace(kLDMVAEPrefix + key, t);
    weights = convert_ldm_vae(prefixed, config);
  } else {
    throw Error(file +
                ": not a VAE (no encoder.down / decoder.up tensors, in LDM or diffusers "
                "names)");
  }
  AutoencoderKL vae(config);
  load_weights(*vae, weights, "vae (" + file + ", --vae)", target);
  vae->eval();
  return vae;
}

}  // namespace sdgen
