#pragma once

// diffusers Transformer2DModel (continuous input) and its pieces:
// Attention (models/attention_processor.py), GEGLU FeedForward and
// BasicTransformerBlock (models/attention.py), as used by SD1.x / SD2.x UNets.

#include <torch/torch.h>
#include "sdgen/layers.h"

namespace sdgen::nn {

// Multi-head attention with bias-free q/k/v projections and a biased output
// projection. Parameters: to_q, to_k, to_v, to_out.0.
class CrossAttentionImpl : public torch::nn::Module {
 public:
  // context_dim: width of the key/value source (query_dim for self-attention).
  CrossAttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads, int64_t head_dim,
                     bool upcast_attention);
  // x [B, L, query_dim]; context [B, S, context_dim], undefined for self-attention.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context = {});

 private:
  int64_t heads_;
  bool upcast_attention_;
  nn::Linear to_q_{nullptr}, to_k_{nullptr}, to_v_{nullptr};
  torch::nn::ModuleList to_out_{nullptr};
  nn::Linear out_proj_{nullptr};  // to_out.0
};
TORCH_MODULE(CrossAttention);

// diffusers FeedForward(activation_fn="geglu"): net.0 = GEGLU (net.0.proj,
// dim -> 2 * inner), net.1 = dropout (no parameters), net.2 = Linear(inner, dim).
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(int64_t dim, int64_t mult = 4);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  nn::Linear proj_{nullptr};  // net.0.proj
  nn::Linear out_{nullptr};   // net.2
};
TORCH_MODULE(FeedForward);

// diffusers BasicTransformerBlock (norm_type="layer_norm"): self-attention,
// cross-attention and GEGLU feed-forward, each pre-LayerNorm with a residual.
// Parameters: norm1, attn1, norm2, attn2, norm3, ff.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, int64_t context_dim,
                            bool upcast_attention);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

 private:
  nn::LayerNorm norm1_{nullptr}, norm2_{nullptr}, norm3_{nullptr};
  CrossAttention attn1_{nullptr}, attn2_{nullptr};
  FeedForward ff_{nullptr};
};
TORCH_MODULE(BasicTransformerBlock);

struct Transformer2DOptions {
  int64_t channels = 0;  // in_channels == inner_dim in SD UNets
  int64_t heads = 8;
  int64_t context_dim = 768;
  int64_t num_layers = 1;
  int64_t groups = 32;
  bool use_linear_projection = false;
  bool upcast_attention = false;
};

// diffusers Transformer2DModel for continuous [B, C, H, W] input.
// Parameters: norm (GroupNorm, eps 1e-6), proj_in (1x1 conv or linear),
// transformer_blocks.N, proj_out.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const Transformer2DOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& context);

 private:
  Transformer2DOptions options_;
  nn::GroupNorm norm_{nullptr};
  nn::Conv2d proj_in_conv_{nullptr}, proj_out_conv_{nullptr};
  nn::Linear proj_in_linear_{nullptr}, proj_out_linear_{nullptr};
  std::vector<BasicTransformerBlock> blocks_;
};
TORCH_MODULE(Transformer2DModel);

}  // namespace sdgen::nn
