#pragma once

// A separate VAE (--vae): vae_file.cpp.

#include <string>

#include "sdgen/config.h"
#include "sdgen/vae.h"
#include "sdgen/weights.h"

namespace sdgen {

// The weights file a --vae path names (the folder's
// diffusion_pytorch_model.safetensors, or the file); throws Error when there
// is none or it is a pickle file.
std::string separate_vae_weights_file(const std::string& path);

// The VAE at `path`, with the model's VAE architecture unless a diffusers
// folder brings its own config.json, loaded strictly to `target`.
AutoencoderKL load_separate_vae(const std::string& path, const VAEConfig& model_config,
                                const WeightTarget& target);

}  // namespace sdgen
