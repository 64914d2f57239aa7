#pragma once

// diffusers Downsample2D / Upsample2D (models/downsampling.py, models/upsampling.py)
// with use_conv=True, the only variant SD UNets and VAEs use.

#include <optional>
#include <vector>
#include "sdgen/layers.h"

#include <torch/torch.h>

namespace sdgen::nn {

// conv 3x3 stride 2. padding 1 in the UNet; padding 0 in the VAE encoder, where
// the input is first padded by (0, 1, 0, 1) (right and bottom) as diffusers does.
// Parameter: conv.
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t padding_;
  nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Downsample2D);

// nearest x2 (or to an explicit output size, so that odd sizes round-trip the
// downsampler), then conv 3x3. Parameter: conv.
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, int64_t out_channels);
  // output_size: {H, W}; empty = twice the input size.
  torch::Tensor forward(const torch::Tensor& x, std::vector<int64_t> output_size = {});

 private:
  nn::Conv2d conv_{nullptr};
};
TORCH_MODULE(Upsample2D);

}  // namespace sdgen::nn
