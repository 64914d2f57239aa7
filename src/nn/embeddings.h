#pragma once

// Timestep embeddings (diffusers models/embeddings.py).

#include <torch/torch.h>
#include "sdgen/layers.h"

namespace sdgen::nn {

// diffusers get_timestep_embedding: sinusoidal features of `timesteps` [N]
// (any numeric dtype) -> float32 [N, dim], computed in float32 on the
// timesteps' device.
torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                 double downscale_freq_shift, double max_period = 10000.0);

// diffusers TimestepEmbedding: linear_1 -> SiLU -> linear_2.
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  nn::Linear linear_1_{nullptr};
  nn::Linear linear_2_{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace sdgen::nn
