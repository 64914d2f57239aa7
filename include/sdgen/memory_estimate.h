#pragma once

// How much memory a generation needs, estimated before anything is allocated,
// and what is available; so that a request that cannot fit fails early with
// one clear line and a suggestion, instead of dying in the allocator (or being
// killed by the kernel) minutes into a run. Also recognises and words the
// out-of-memory errors that still happen (CUDA).
//
// The estimate is weights (parameter counts x the compute dtype, or the bytes
// the checkpoint stores when weights are kept as stored) + the peak of
// the largest stage (text encoder, one UNet step, VAE decode, VAE encode for
// img2img) + a fixed runtime allowance. Each stage's peak comes from walking
// the architecture in its config with the request's size and batch, counting
// the tensors alive at once (skip connections, the working tensors of a
// ResNet block or transformer block, the attention score blocks of
// src/nn/attention.cpp, convolution reorder buffers). Validated against the
// measured peak resident memory on the CPU (numbers in README.md "Memory").

#include <cstdint>
#include <exception>
#include <optional>
#include <string>

#include <torch/torch.h>

#include "sdgen/config.h"
#include "sdgen/model.h"

namespace sdgen {

inline constexpr int64_t kMiB = 1024 * 1024;  // bytes in a mebibyte

// A model's architecture and parameter counts: enough to estimate its memory.
struct ModelFootprint {
  UNetConfig unet;
  VAEConfig vae;
  CLIPTextConfig text_encoder;
  // SDXL's second text encoder (its parameters are in text_encoder_parameters).
  std::optional<CLIPTextConfig> text_encoder_2;
  int64_t unet_parameters = 0;
  int64_t vae_parameters = 0;
  int64_t text_encoder_parameters = 0;  // all text encoders
  // All parts' weights in the dtypes the checkpoint stores them (the loaded
  // parameters' bytes for model_footprint): what MemorySettings::
  // weights_as_stored keeps resident.
  int64_t stored_weight_bytes = 0;
};

// From the model's files without loading any weight: the configs (read, or
// inferred from a single file's tensor shapes, as load_model does) and the
// element counts of the checkpoint's tensor table. Throws Error as load_model
// would (the caller may then let load_model report it).
ModelFootprint inspect_model_files(const LoadOptions& options);
// From a loaded model (its modules' parameters).
ModelFootprint model_footprint(const StableDiffusionModel& model);

// Where and how the model runs.
struct MemorySettings {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;      // text encoder and UNet
  torch::ScalarType vae_dtype = torch::kFloat32;  // VAE
  bool cuda_graphs = true;  // CUDA: the captured UNet graph keeps its own memory pool
  // CPU: weights kept as stored, converted per layer on use (LoadOptions::
  // weights_as_stored): ModelFootprint::stored_weight_bytes, plus the largest
  // layer's converted copy.
  bool weights_as_stored = false;
};

// The parts of a request that change the activations.
struct MemoryRequest {
  int width = 512;
  int height = 512;
  // Images in the UNet batch and the VAE decode: a mixed-prompt batch
  // (Pipeline::generate_batch) counts every request's images; its text
  // encoder and VAE encoder run one request at a time, as alone.
  int batch_size = 1;
  bool guided = true;  // classifier-free guidance: the UNet runs on 2 x batch
  bool vae_tiling = false;
  bool img2img = false;   // the VAE encoder runs on the init image first
  int prompt_chunks = 1;  // 77-token chunks of the longest prompt
  // Original weights the LoRA merger will copy to restore them later
  // (LoraMerger::new_copy_bytes; 0 on the CPU, where they are read back from
  // the checkpoint file).
  int64_t lora_copy_bytes = 0;
};

// Bytes.
struct MemoryEstimate {
  // All three parts in their dtypes; with MemorySettings::weights_as_stored
  // on the CPU, the largest model's stored weights (one model's at a time).
  int64_t weights = 0;
  int64_t text_encoder = 0;  // peak activations of each stage
  int64_t unet = 0;
  int64_t vae_decode = 0;
  int64_t vae_encode = 0;
  int64_t lora_copies = 0;  // MemoryRequest::lora_copy_bytes
  int64_t overhead = 0;     // runtime allowance (libraries, allocator slack, workspaces)
  int64_t total = 0;        // weights + LoRA copies + the largest stage + overhead
  std::string peak_stage;   // "UNet", "VAE decode", ...
  int64_t peak_activations() const { return total - weights - lora_copies - overhead; }
};

MemoryEstimate estimate_memory(const ModelFootprint& model, const MemorySettings& settings,
                               const MemoryRequest& request);

// Memory the process may use on `device`, in bytes (-1: unknown).
//   SDGEN_MEMORY_LIMIT_MB=N (any device): N MiB for the whole process, weights
//     included (for tests, and to keep sdgen within a budget).
//   CPU: MemAvailable from /proc/meminfo, plus `resident_weights` (weights
//     already loaded count as available to the request that uses them).
//   CUDA: free device memory (cudaMemGetInfo) + what libtorch's caching
//     allocator holds unused + `resident_weights`; unknown in builds without
//     CUDA support.
struct AvailableMemory {
  int64_t bytes = -1;
  std::string source;  // "SDGEN_MEMORY_LIMIT_MB", "MemAvailable", "free GPU memory"
};
AvailableMemory available_memory(const torch::Device& device, int64_t resident_weights = 0);

// "" when `estimate` fits in `available` (or the available memory is
// unknown); otherwise one line: what was asked, what it needs (weights +
// the largest stage + runtime), what is available, and what to try. An
// estimate with an empty peak_stage is the weights alone (+ runtime).
std::string memory_check_message(const MemoryEstimate& estimate, const AvailableMemory& available,
                                 const MemorySettings& settings, const MemoryRequest& request);

// What to try when a request does not fit, e.g. "try a smaller size (-W/-H),
// --vae-tiling, --dtype bf16"; depends on the request and the stage that peaks.
std::string memory_suggestions(const MemoryEstimate& estimate, const MemorySettings& settings,
                               const MemoryRequest& request);

// True for c10::OutOfMemoryError and any error whose message says "out of
// memory" (CUDA, cuDNN and cuBLAS report it in different ways).
bool is_out_of_memory(const std::exception& error);
// One line for an out-of-memory error that happened anyway: "out of memory on
// cuda:0 while generating 1024x1024, batch 4, fp16 (... needs about X); try ...".
std::string out_of_memory_message(const MemoryEstimate& estimate, const MemorySettings& settings,
                                  const MemoryRequest& request);

// Gives the CUDA caching allocator's unused blocks back to the driver (after
// an out-of-memory error, before the next request). No-op elsewhere.
void release_cached_memory(const torch::Device& device);

// "3.2 GiB", "410 MiB".
std::string format_bytes(int64_t bytes);

}  // namespace sdgen
