#pragma once

// The parameterised layers sdgen's models are built from: Conv2d, Linear,
// GroupNorm, LayerNorm and Embedding with the parameter names of their
// torch.nn counterparts ("weight", "bias") and the same forward math.
//
// Unlike torch::nn's layers they do not initialise their weights: every model
// is loaded from a checkpoint right after it is built, so random
// initialisation would only cost time (seconds for SD1.5) and, on the CPU,
// memory. Weights are allocated with torch::empty and replaced at load time
// by load_weights(); tools that want random weights draw them explicitly.
//
// Each layer computes in its weights' dtype unless `compute_dtype` is set:
// then the weights stay as they were loaded (e.g. the checkpoint's fp16,
// straight from the file mapping) and are converted to `compute_dtype` on
// every use, the copy freed right after the operation (--dtype fp32-lowmem:
// fp16 -> fp32 is exact, so results match weights converted once at load).

#include <cstdint>
#include <optional>

#include <torch/torch.h>

namespace sdgen::nn {

class Conv2dImpl : public torch::nn::Module {
 public:
  Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride = 1,
             int64_t padding = 0, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [out, in, k, k]
  // Unset: the weights' own dtype (see above).
  std::optional<torch::ScalarType> compute_dtype;
  torch::ScalarType dtype() const { return compute_dtype.value_or(weight.scalar_type()); }
  torch::Tensor bias;  // [out] or undefined
  int64_t stride;
  int64_t padding;
};
TORCH_MODULE(Conv2d);

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features, bool bias = true);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [out, in]
  // Unset: the weights' own dtype (see above).
  std::optional<torch::ScalarType> compute_dtype;
  torch::ScalarType dtype() const { return compute_dtype.value_or(weight.scalar_type()); }
  torch::Tensor bias;  // [out] or undefined
};
TORCH_MODULE(Linear);

class GroupNormImpl : public torch::nn::Module {
 public:
  GroupNormImpl(int64_t groups, int64_t channels, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  // silu(forward(x)), fused where a kernel allows it (bf16 on the CPU).
  torch::Tensor forward_silu(const torch::Tensor& x);

  torch::Tensor weight;  // [channels], initialised to 1
  // Unset: the weights' own dtype (see above).
  std::optional<torch::ScalarType> compute_dtype;
  torch::ScalarType dtype() const { return compute_dtype.value_or(weight.scalar_type()); }
  torch::Tensor bias;  // [channels], initialised to 0
  int64_t groups;
  double eps;
};
TORCH_MODULE(GroupNorm);

class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;  // [dim], initialised to 1
  // Unset: the weights' own dtype (see above).
  std::optional<torch::ScalarType> compute_dtype;
  torch::ScalarType dtype() const { return compute_dtype.value_or(weight.scalar_type()); }
  torch::Tensor bias;  // [dim], initialised to 0
  int64_t dim;
  double eps;
};
TORCH_MODULE(LayerNorm);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t count, int64_t dim);
  torch::Tensor forward(const torch::Tensor& ids);

  torch::Tensor weight;  // [count, dim]
  // Unset: the weights' own dtype (see above).
  std::optional<torch::ScalarType> compute_dtype;
  torch::ScalarType dtype() const { return compute_dtype.value_or(weight.scalar_type()); }
};
TORCH_MODULE(Embedding);

// Sets compute_dtype on every layer above in `module` and its submodules.
void set_compute_dtype(torch::nn::Module& module, torch::ScalarType dtype);

}  // namespace sdgen::nn
