#include "nn/embeddings.h"
#include "sdgen/layers.h"

#include <cmath>

namespace sdgen::nn {

// diffusers get_timestep_embedding:
//   freq_j = exp(-ln(max_period) * j / (half - shift)), j = 0..half-1
//   emb = [sin(t * freq), cos(t * freq)], swapped to [cos, sin] when flip_sin_to_cos,
//   zero-padded by one column for odd dims.
torch::Tensor timestep_embedding(const torch::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                                 double downscale_freq_shift, double max_period) {
  const int64_t half = dim / 2;
  auto options = torch::dtype(torch::kFloat).device(timesteps.device());
  auto exponent = torch::arange(0, half, options) * static_cast<float>(-std::log(max_period));
  exponent = exponent / static_cast<float>(static_cast<double>(half) - downscale_freq_shift);
  auto freqs = exponent.exp();
  auto args = timesteps.reshape({-1, 1}).to(torch::kFloat) * freqs.unsqueeze(0);
  auto emb = flip_sin_to_cos ? torch::cat({args.cos(), args.sin()}, -1)
                             : torch::cat({args.sin(), args.cos()}, -1);
  if (dim % 2 == 1)
    emb = torch::nn::functional::pad(emb, torch::nn::functional::PadFuncOptions({0, 1}));
  return emb;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim) {
  linear_1_ = register_module("linear_1", nn::Linear(in_channels, time_embed_dim));
  linear_2_ = register_module("linear_2", nn::Linear(time_embed_dim, time_embed_dim));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& x) {
  return linear_2_(torch::nn::functional::silu(linear_1_(x)));
}

}  // namespace sdgen::nn
