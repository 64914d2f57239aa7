#pragma once

// diffusers ResnetBlock2D (models/resnet.py), the "default" time-embedding
// variant used by SD1.x / SD2.x UNets and by the AutoencoderKL encoder/decoder.

#include <torch/torch.h>
#include "sdgen/layers.h"

namespace sdgen::nn {

struct ResnetBlock2DOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t temb_channels = 0;  // 0: no time embedding (VAE), so no `time_emb_proj`
  int64_t groups = 32;
  double eps = 1e-6;
  double output_scale_factor = 1.0;
};

// Parameters: norm1, conv1, time_emb_proj (optional), norm2, conv2,
// conv_shortcut (1x1, only when in_channels != out_channels).
class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DOptions& options);

  // x [B, in, H, W], temb [B, temb_channels] (undefined when the block has none).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb = {});

 private:
  ResnetBlock2DOptions options_;
  nn::GroupNorm norm1_{nullptr};
  nn::Conv2d conv1_{nullptr};
  nn::Linear time_emb_proj_{nullptr};
  nn::GroupNorm norm2_{nullptr};
  nn::Conv2d conv2_{nullptr};
  nn::Conv2d conv_shortcut_{nullptr};
};
TORCH_MODULE(ResnetBlock2D);

}  // namespace sdgen::nn
