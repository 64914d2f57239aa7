#pragma once

// The encoder and decoder of diffusers AutoencoderKL
// (models/autoencoders/vae.py: Encoder, Decoder) and their blocks.

#include <vector>
#include "sdgen/layers.h"

#include <torch/torch.h>

#include "nn/resnet.h"
#include "nn/sampling.h"

namespace sdgen::nn {

// diffusers Attention as built by UNetMidBlock2D for the VAE: GroupNorm on the
// input, single-head self-attention over the H*W positions with biased linear
// q/k/v/out projections, plus the input residual.
// Parameters: group_norm, to_q, to_k, to_v, to_out.0.
class SpatialSelfAttentionImpl : public torch::nn::Module {
 public:
  SpatialSelfAttentionImpl(int64_t channels, int64_t groups, double eps, int64_t heads = 1);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t heads_;
  nn::GroupNorm group_norm_{nullptr};
  nn::Linear to_q_{nullptr}, to_k_{nullptr}, to_v_{nullptr};
  nn::Linear out_proj_{nullptr};  // to_out.0
};
TORCH_MODULE(SpatialSelfAttention);

// diffusers UNetMidBlock2D without time embedding: resnets.0, then
// (attentions.i, resnets.i+1); attentions are left out when add_attention is false.
class VAEMidBlockImpl : public torch::nn::Module {
 public:
  VAEMidBlockImpl(int64_t channels, int64_t groups, double eps, bool add_attention);
  torch::Tensor forward(torch::Tensor x);

 private:
  std::vector<ResnetBlock2D> resnets_;
  std::vector<SpatialSelfAttention> attentions_;
};
TORCH_MODULE(VAEMidBlock);

struct VAECoderOptions {
  int64_t in_channels = 3;   // encoder: image channels; decoder: latent channels
  int64_t out_channels = 8;  // encoder: 2 * latent channels (mean, logvar); decoder: image channels
  std::vector<int64_t> block_out_channels = {128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t groups = 32;
  bool mid_block_add_attention = true;
};

// diffusers Encoder (double_z=True): conv_in, down_blocks.N (DownEncoderBlock2D:
// resnets.M, downsamplers.0 except the last), mid_block, conv_norm_out, conv_out.
class VAEEncoderImpl : public torch::nn::Module {
 public:
  explicit VAEEncoderImpl(const VAECoderOptions& options);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  nn::Conv2d conv_in_{nullptr};
  std::vector<std::vector<ResnetBlock2D>> resnets_;
  std::vector<Downsample2D> downsamplers_;  // null holder for the last block
  VAEMidBlock mid_block_{nullptr};
  nn::GroupNorm conv_norm_out_{nullptr};
  nn::Conv2d conv_out_{nullptr};
};
TORCH_MODULE(VAEEncoder);

// diffusers Decoder: conv_in, mid_block, up_blocks.N (UpDecoderBlock2D:
// layers_per_block + 1 resnets, upsamplers.0 except the last), conv_norm_out, conv_out.
class VAEDecoderImpl : public torch::nn::Module {
 public:
  explicit VAEDecoderImpl(const VAECoderOptions& options);
  torch::Tensor forward(const torch::Tensor& z);

 private:
  nn::Conv2d conv_in_{nullptr};
  VAEMidBlock mid_block_{nullptr};
  std::vector<std::vector<ResnetBlock2D>> resnets_;
  std::vector<Upsample2D> upsamplers_;  // null holder for the last block
  nn::GroupNorm conv_norm_out_{nullptr};
  nn::Conv2d conv_out_{nullptr};
};
TORCH_MODULE(VAEDecoder);

}  // namespace sdgen::nn
