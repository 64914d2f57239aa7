#pragma once

// Random weights for smoke tests and benchmarks: full-size checkpoints with
// the tensor names and shapes of a manifest entry, and random parameters for
// modules built in code. Scaled like a trained network (norm weights 1,
// biases 0, other weights ~ N(0, 1/fan_in), embeddings N(0, 0.02^2)) so that
// activations stay finite in fp16 through a whole pipeline.

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace sdgen {

// One random tensor for parameter `name` (the name decides bias/norm/embedding).
// Draws from libtorch's global generator.
torch::Tensor random_weight(const std::string& name, const std::vector<int64_t>& shape,
                            torch::ScalarType dtype);

// Replaces every parameter of `module` by random_weight(name, shape, float32).
void randomize_parameters(torch::nn::Module& module);

struct RandomCheckpointInfo {
  size_t tensors = 0;
  int64_t parameters = 0;
};

// Writes a .safetensors file with the tensors of `manifest_path`[`key`]
// (e.g. "sd15.single" in ../shared/data/manifests.json), random weights in
// `dtype_name` (fp16, bf16 or fp32) drawn from `seed`. Atomic (temp + rename).
RandomCheckpointInfo write_random_checkpoint(const std::string& manifest_path,
                                             const std::string& key, const std::string& out,
                                             const std::string& dtype_name, uint64_t seed);

}  // namespace sdgen
