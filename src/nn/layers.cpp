#include "sdgen/layers.h"

namespace sdgen::nn {

Conv2dImpl::Conv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride,
                       int64_t padding, bool bias)
    : stride(stride), padding(padding) {
  weight = register_parameter("weight", torch::empty({out_channels, in_channels, kernel, kernel}));
  if (bias) this->bias = register_parameter("bias", torch::empty({out_channels}));
}

// torch.nn.Conv2d.forward (zeros padding, no dilation, one group).
torch::Tensor Conv2dImpl::forward(const torch::Tensor& x) {
  return torch::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
}

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool bias) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  if (bias) this->bias = register_parameter("bias", torch::empty({out_features}));
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) { return torch::linear(x, weight, bias); }

GroupNormImpl::GroupNormImpl(int64_t groups, int64_t channels, double eps)
    : groups(groups), eps(eps) {
  weight = register_parameter("weight", torch::ones({channels}));
  bias = register_parameter("bias", torch::zeros({channels}));
}

// bf16 on the CPU is normalised in fp32: libtorch 1.13's bf16 GroupNorm
// (channels_last above all) drifted up to 66 8-bit levels from the fp32
// reference over a 10-step pipeline; in fp32 it stays within 7.
torch::Tensor GroupNormImpl::forward(const torch::Tensor& x) {
  if (x.is_cpu() && x.scalar_type() == torch::kBFloat16)
    return torch::group_norm(x.to(torch::kFloat), groups, weight.to(torch::kFloat),
                             bias.to(torch::kFloat), eps)
        .to(torch::kBFloat16);
  return torch::group_norm(x, groups, weight, bias, eps);
}

LayerNormImpl::LayerNormImpl(int64_t dim, double eps) : dim(dim), eps(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  return torch::layer_norm(x, {dim}, weight, bias, eps);
}

EmbeddingImpl::EmbeddingImpl(int64_t count, int64_t dim) {
  weight = register_parameter("weight", torch::empty({count, dim}));
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) {
  return torch::embedding(weight, ids);
}

}  // namespace sdgen::nn
