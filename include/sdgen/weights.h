#pragma once

// Strict, name-based loading of tensors into libtorch modules.

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "sdgen/safetensors.h"

namespace sdgen {

// Module parameter name (as `named_parameters()` spells it) → source tensor,
// usually a zero-copy view into a memory-mapped safetensors file.
using TensorMap = std::map<std::string, torch::Tensor>;

// Every tensor of `file` whose key starts with `prefix`, the prefix removed.
TensorMap tensors_with_prefix(const SafeTensorsFile& file, const std::string& prefix);

// Where loaded weights go. Unset fields keep each parameter's own device/dtype.
struct WeightTarget {
  std::optional<torch::Device> device;
  std::optional<torch::ScalarType> dtype;
  bool channels_last = false;  // store 4-D (convolution) weights in channels_last format
  // Optional: the key a source tensor has in its file, when `weights` were
  // renamed (single-file checkpoints), so that errors name both
  // ("<file key> -> <module key> (expected ..., found ...)"); "" if unknown.
  std::function<std::string(const torch::Tensor&)> file_key;
  // CPU: floating-point sources (fp16, bf16, fp32) become the parameters
  // themselves, in their stored dtype (for a SafeTensorsFile, views of its
  // read-only mapping: no copy, and writing to them faults), and every layer
  // computes in `dtype`, converting its weights on use (nn::set_compute_dtype).
  // Other sources are converted to `dtype` as usual. channels_last is ignored.
  bool as_stored = false;
};

// Replaces the parameters of `module` by the tensors of `weights` with the
// same name, converted once to the target device and dtype (the parameter
// tensors are swapped, not copied into, so a module built without
// initialisation costs nothing extra). Strict: every parameter must be found,
// every tensor must be used, and shapes must match; otherwise throws Error that
// names `what` (e.g. "unet (model.safetensors)") and each key at fault with the
// expected and found shapes, before any parameter is changed.
//
// CPU sources that alias a SafeTensorsFile mapping have their pages released
// once converted. CUDA targets are filled through pinned staging buffers with
// asynchronous copies, converting the dtype on the GPU.
void load_weights(torch::nn::Module& module, const TensorMap& weights, const std::string& what,
                  const WeightTarget& target = {});

// Models loaded with WeightTarget::as_stored keep their weights in file
// pages; only the model that is computing needs them resident. Called as a
// model (text encoder, UNet, VAE) starts: when another such model's pages
// were resident they are dropped from this process (they stay in the page
// cache, so touching them again is a minor fault, no disk read) and
// `module`'s are mapped in, in one system call. A no-op for other modules
// and when `module` is already the resident one. Always correct: a dropped
// page of a read-only file mapping reads back the same bytes.
void make_weights_resident(const torch::nn::Module& module);

// The inverse, for writing safetensors: the parameters of `module` as named
// tensors (`prefix` + name), detached, converted to `dtype` and contiguous.
std::vector<std::pair<std::string, torch::Tensor>> named_tensors(torch::nn::Module& module,
                                                                 const std::string& prefix,
                                                                 torch::ScalarType dtype);

// "[320, 4, 3, 3]"
std::string shape_string(at::IntArrayRef shape);

}  // namespace sdgen
