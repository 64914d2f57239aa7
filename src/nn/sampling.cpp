#include "nn/sampling.h"
#include "sdgen/layers.h"

namespace sdgen::nn {

namespace F = torch::nn::functional;

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding)
    : padding_(padding) {
  conv_ = register_module("conv", nn::Conv2d(channels, out_channels, 3, 2, padding));
}

// diffusers Downsample2D.forward: with padding 0, pad (0, 1, 0, 1) with zeros first.
torch::Tensor Downsample2DImpl::forward(const torch::Tensor& x) {
  if (padding_ == 0) {
    return conv_(F::pad(x, F::PadFuncOptions({0, 1, 0, 1}).mode(torch::kConstant).value(0)));
  }
  return conv_(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv_ = register_module("conv", nn::Conv2d(channels, out_channels, 3, 1, 1));
}

// diffusers Upsample2D.forward: F.interpolate(mode="nearest", scale_factor=2 or
// size=output_size), computed in fp32 for bfloat16 inputs (nearest upsampling
// lacks bf16 kernels on older torch), then conv.
torch::Tensor Upsample2DImpl::forward(const torch::Tensor& x, std::vector<int64_t> output_size) {
  if (output_size.empty()) output_size = {x.size(2) * 2, x.size(3) * 2};
  const auto dtype = x.scalar_type();
  auto h = dtype == torch::kBFloat16 ? x.to(torch::kFloat) : x;
  h = F::interpolate(h, F::InterpolateFuncOptions().size(output_size).mode(torch::kNearest));
  if (dtype == torch::kBFloat16) h = h.to(dtype);
  return conv_(h);
}

}  // namespace sdgen::nn
