#pragma once

// Loading a whole Stable Diffusion model (tokenizer, text encoder, UNet, VAE,
// scheduler config) from either layout users have: a diffusers folder or a
// single-file (A1111/ComfyUI) .safetensors checkpoint.

#include <memory>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "sdgen/config.h"
#include "sdgen/model_files.h"
#include "sdgen/text_encoder.h"
#include "sdgen/tokenizer.h"
#include "sdgen/unet.h"
#include "sdgen/vae.h"
#include "sdgen/weights.h"

namespace sdgen {

struct LoadOptions {
  std::string model_path;  // diffusers folder or .safetensors file
  std::string
      config_dir;  // optional diffusers-style folder with */config.json (overrides inference)
  std::string tokenizer_path;  // optional folder or bpe_simple_vocab_16e6.txt.gz
  // Optional separate VAE (--vae): a .safetensors file or a diffusers vae/
  // folder that replaces the model's own VAE.
  std::string vae_path;
  std::string prediction_type;  // "" (from the model), "epsilon" or "v_prediction"
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  // The VAE's own dtype (unset: `dtype`). On CUDA an fp16 VAE whose decode
  // overflows is switched to fp32 automatically, with a warning.
  std::optional<torch::ScalarType> vae_dtype;
  bool verbose = false;  // print what was detected and loaded to stderr
  // CUDA: capture the UNet step in a CUDA graph per (batch, height, width) and
  // replay it (--no-cuda-graphs turns it off).
  bool cuda_graphs = true;
  // Convolutions in channels_last (NHWC) memory format: -1 the device's
  // default (measured: see README), 0 off, 1 on.
  int channels_last = -1;
  // CPU (--dtype fp32-lowmem): keep the checkpoint's floating-point weights
  // as stored (fp16, bf16 or fp32 views of the mapped file, no copy) and
  // compute in `dtype` / `vae_dtype`, each layer converting its weights on use
  // (WeightTarget::as_stored). Ignored on CUDA.
  bool weights_as_stored = false;
};

struct StableDiffusionModel {
  std::string source;    // the path given
  std::string family;    // "SD1.x", "SD2.x" or "SDXL"
  std::string layout;    // "diffusers" or "single-file"
  std::string vae_file;  // the separate VAE's weights file (--vae), or ""
  std::unique_ptr<Tokenizer> tokenizer;
  CLIPTextModel text_encoder{nullptr};
  // SDXL: the second tokenizer (pads with "!") and text encoder (OpenCLIP
  // ViT-bigG with projection); null for SD1/SD2.
  std::unique_ptr<Tokenizer> tokenizer_2;
  CLIPTextModel text_encoder_2{nullptr};
  // SDXL pipelines: an empty negative prompt conditions on zeros
  // (model_index.json's force_zeros_for_empty_prompt; true for SDXL base).
  bool force_zeros_for_empty_prompt = false;
  UNet2DConditionModel unet{nullptr};
  AutoencoderKL vae{nullptr};
  SchedulerConfig scheduler_config;
  // The guidance_rescale a diffusers folder asks for when the user gives none
  // (model_index.json "_sdgen_guidance_rescale", which diffusers ignores as it
  // ignores every key starting with "_"); sdgen's own trained models set it.
  std::optional<double> default_guidance_rescale;
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;      // text encoder and UNet
  torch::ScalarType vae_dtype = torch::kFloat32;  // VAE
  bool cuda_graphs = true;                        // from LoadOptions
  bool channels_last = false;                     // resolved from LoadOptions
  // LoadOptions::weights_as_stored in effect: parameters may be read-only
  // views of the file mapping (replace them with set_data, never write to
  // them); `dtype` and `vae_dtype` are the compute dtypes.
  bool weights_as_stored = false;
  // CPU models: the file tensors (views of the memory-mapped checkpoint, no
  // resident memory of their own) that the UNet's and text encoders'
  // parameters were converted from, by component ("unet", "text_encoder",
  // "text_encoder_2") and parameter name; parameters converted from a
  // computed tensor are absent. LoRA un-merging restores weights from them
  // instead of keeping copies (an SDXL LoRA touches most of the UNet).
  std::map<std::string, TensorMap> weight_sources;

  // SDXL: two text encoders and the UNet's size/crop conditioning.
  bool is_sdxl() const { return static_cast<bool>(text_encoder_2); }
};

// Throws Error naming the path/key at fault. The files read are those of
// resolve_model_files(options) (model_files.h).
StableDiffusionModel load_model(const LoadOptions& options);

}  // namespace sdgen
