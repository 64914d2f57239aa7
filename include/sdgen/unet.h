#pragma once

// diffusers UNet2DConditionModel for SD1.x / SD2.x / SDXL, built from its config.json.
// Parameter names equal the diffusers checkpoint keys
// (e.g. "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight").

#include <memory>
#include <vector>
#include "sdgen/layers.h"

#include <torch/torch.h>

#include "sdgen/config.h"

namespace sdgen {

namespace nn {
class TimestepEmbeddingImpl;
class UNetDownBlockImpl;
class UNetMidBlockCrossAttnImpl;
class UNetUpBlockImpl;
}  // namespace nn

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const UNetConfig& config);

  // sample [B, in_channels, h, w] (h, w multiples of 2^(blocks-1)),
  // timesteps [B] (any numeric dtype), encoder_hidden_states [B, L, cross_attention_dim]
  // -> [B, out_channels, h, w] (epsilon or v, as the model was trained).
  // added_embedding: addition_embedding()'s [B, time_dim], required exactly
  // when the model has an addition embedding (SDXL), else undefined.
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timesteps,
                        const torch::Tensor& encoder_hidden_states,
                        const torch::Tensor& added_embedding = {});

  // True for SDXL-style UNets (addition_embed_type "text_time").
  bool has_addition_embedding() const { return add_embedding_ != nullptr; }
  // diffusers' get_aug_embed for "text_time": text_embeds [B, P] (the pooled,
  // projected text embedding) and time_ids [B, N] (original size, crop top-left,
  // target size: N = 6 for SDXL) -> [B, time_dim] in the model's dtype, the
  // term added to the time embedding. It does not depend on the timestep, so a
  // pipeline computes it once per image.
  torch::Tensor addition_embedding(const torch::Tensor& text_embeds, const torch::Tensor& time_ids);

  const UNetConfig& config() const { return config_; }
  // Latent sizes must be multiples of this (2^(number of downsamplers)).
  int downsample_factor() const;

 private:
  UNetConfig config_;
  // Blocks are defined in src/nn/ (private headers), hence the pointers.
  nn::Conv2d conv_in_{nullptr};
  std::shared_ptr<nn::TimestepEmbeddingImpl> time_embedding_;
  std::shared_ptr<nn::TimestepEmbeddingImpl> add_embedding_;  // SDXL, else null
  std::vector<std::shared_ptr<nn::UNetDownBlockImpl>> down_blocks_;
  std::shared_ptr<nn::UNetMidBlockCrossAttnImpl> mid_block_;
  std::vector<std::shared_ptr<nn::UNetUpBlockImpl>> up_blocks_;
  nn::GroupNorm conv_norm_out_{nullptr};
  nn::Conv2d conv_out_{nullptr};
};
TORCH_MODULE(UNet2DConditionModel);

}  // namespace sdgen
