#pragma once

// Strict, name-based loading of tensors into libtorch modules.

#include <map>
#include <string>

#include <torch/torch.h>

#include "sdgen/safetensors.h"

namespace sdgen {

// Module parameter name (as `named_parameters()` spells it) → source tensor,
// usually a zero-copy view into a memory-mapped safetensors file.
using TensorMap = std::map<std::string, torch::Tensor>;

// Every tensor of `file` whose key starts with `prefix`, the prefix removed.
TensorMap tensors_with_prefix(const SafeTensorsFile& file, const std::string& prefix);

// Copies `weights` into the parameters of `module` by exact name, converting
// to each parameter's dtype and device. Strict: every parameter must be found,
// every tensor must be used, and shapes must match; otherwise throws Error that
// names `what` (e.g. "unet (model.safetensors)") and each key at fault with the
// expected and found shapes.
void load_weights(torch::nn::Module& module, const TensorMap& weights, const std::string& what);

// "[320, 4, 3, 3]"
std::string shape_string(at::IntArrayRef shape);

}  // namespace sdgen
