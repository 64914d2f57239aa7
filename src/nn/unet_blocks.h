#pragma once

// The down, mid and up blocks of diffusers UNet2DConditionModel
// (models/unets/unet_2d_blocks.py), SD1.x / SD2.x subset.

#include <vector>

#include <torch/torch.h>

#include "nn/resnet.h"
#include "nn/sampling.h"
#include "nn/transformer.h"

namespace sdgen::nn {

// What the transformers of a block need (shared by all blocks of a UNet).
struct CrossAttnSettings {
  int64_t heads = 8;
  int64_t context_dim = 768;
  int64_t transformer_layers = 1;
  bool use_linear_projection = false;
  bool upcast_attention = false;
};

struct UNetBlockOptions {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t prev_output_channels = 0;  // up blocks only
  int64_t temb_channels = 0;
  int64_t num_layers = 1;
  int64_t groups = 32;
  double eps = 1e-5;
  bool cross_attention = false;  // CrossAttn*Block2D vs plain *Block2D
  bool add_sampler = false;      // downsamplers.0 / upsamplers.0
  int64_t downsample_padding = 1;
  CrossAttnSettings attn;
};

// CrossAttnDownBlock2D (cross_attention = true) or DownBlock2D.
// Parameters: resnets.N, attentions.N, downsamplers.0.
class UNetDownBlockImpl : public torch::nn::Module {
 public:
  explicit UNetDownBlockImpl(const UNetBlockOptions& options);
  // Appends every output the up path consumes as a skip connection to `skips`.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& temb, const torch::Tensor& context,
                        std::vector<torch::Tensor>& skips);

 private:
  std::vector<ResnetBlock2D> resnets_;
  std::vector<Transformer2DModel> attentions_;
  Downsample2D downsampler_{nullptr};
};
TORCH_MODULE(UNetDownBlock);

// UNetMidBlock2DCrossAttn: resnets.0, then (attentions.i, resnets.i+1) pairs.
class UNetMidBlockCrossAttnImpl : public torch::nn::Module {
 public:
  UNetMidBlockCrossAttnImpl(int64_t channels, int64_t temb_channels, int64_t groups, double eps,
                            double output_scale_factor, const CrossAttnSettings& attn,
                            int64_t num_layers = 1);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& temb, const torch::Tensor& context);

 private:
  std::vector<ResnetBlock2D> resnets_;
  std::vector<Transformer2DModel> attentions_;
};
TORCH_MODULE(UNetMidBlockCrossAttn);

// CrossAttnUpBlock2D (cross_attention = true) or UpBlock2D.
// Parameters: resnets.N, attentions.N, upsamplers.0.
class UNetUpBlockImpl : public torch::nn::Module {
 public:
  explicit UNetUpBlockImpl(const UNetBlockOptions& options);
  int64_t num_layers() const { return static_cast<int64_t>(resnets_.size()); }
  // Pops one skip per resnet from the back of `skips`. upsample_size: the
  // spatial size of the next (shallower) skip, so odd sizes round-trip.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& temb, const torch::Tensor& context,
                        std::vector<torch::Tensor>& skips,
                        const std::vector<int64_t>& upsample_size = {});

 private:
  std::vector<ResnetBlock2D> resnets_;
  std::vector<Transformer2DModel> attentions_;
  Upsample2D upsampler_{nullptr};
};
TORCH_MODULE(UNetUpBlock);

}  // namespace sdgen::nn
