#include "nn/transformer.h"
#include "sdgen/layers.h"

#include "nn/attention.h"
#include "sdgen/error.h"

namespace sdgen::nn {

namespace F = torch::nn::functional;

CrossAttentionImpl::CrossAttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads,
                                       int64_t head_dim, bool upcast_attention)
    : heads_(heads), upcast_attention_(upcast_attention) {
  const int64_t inner = heads * head_dim;
  to_q_ = register_module("to_q", nn::Linear(query_dim, inner, false));
  to_k_ = register_module("to_k", nn::Linear(context_dim, inner, false));
  to_v_ = register_module("to_v", nn::Linear(context_dim, inner, false));
  to_out_ = register_module("to_out", torch::nn::ModuleList());
  out_proj_ = nn::Linear(inner, query_dim);
  to_out_->push_back(out_proj_);
}

// diffusers Attention with AttnProcessor2_0: softmax(q k^T / sqrt(d)) v per head,
// then to_out.0. With upcast_attention the attention itself runs in float32
// (the intent of diffusers' upcast_attention for fp16 SD2 models).
torch::Tensor CrossAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& context) {
  const auto& source = context.defined() ? context : x;
  auto q = split_heads(to_q_(x), heads_);
  auto k = split_heads(to_k_(source), heads_);
  auto v = split_heads(to_v_(source), heads_);
  torch::Tensor out;
  if (upcast_attention_ && q.scalar_type() != torch::kFloat) {
    out = attention(q.to(torch::kFloat), k.to(torch::kFloat), v.to(torch::kFloat))
              .to(q.scalar_type());
  } else {
    out = attention(q, k, v);
  }
  return out_proj_(merge_heads(out));
}

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t mult) {
  const int64_t inner = dim * mult;
  // "net" holds children named "0" (GEGLU, with "proj") and "2" (Linear); the
  // dropout at index 1 has no parameters and is left out.
  auto net = register_module("net", std::make_shared<torch::nn::Module>());
  auto geglu = net->register_module("0", std::make_shared<torch::nn::Module>());
  proj_ = geglu->register_module("proj", nn::Linear(dim, inner * 2));
  out_ = net->register_module("2", nn::Linear(inner, dim));
}

// diffusers GEGLU: hidden, gate = proj(x).chunk(2, -1); hidden * gelu(gate) (exact erf GELU).
torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  auto parts = proj_(x).chunk(2, -1);
  return out_(parts[0] * F::gelu(parts[1]));
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim,
                                                     int64_t context_dim, bool upcast_attention) {
  auto ln = [dim] { return nn::LayerNorm(dim, 1e-5); };
  norm1_ = register_module("norm1", ln());
  attn1_ = register_module("attn1", CrossAttention(dim, dim, heads, head_dim, upcast_attention));
  norm2_ = register_module("norm2", ln());
  attn2_ =
      register_module("attn2", CrossAttention(dim, context_dim, heads, head_dim, upcast_attention));
  norm3_ = register_module("norm3", ln());
  ff_ = register_module("ff", FeedForward(dim));
}

// diffusers BasicTransformerBlock.forward (layer_norm, no ada-norm, no gating).
torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& x,
                                                 const torch::Tensor& context) {
  auto h = attn1_(norm1_(x)) + x;
  h = attn2_(norm2_(h), context) + h;
  return ff_(norm3_(h)) + h;
}

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DOptions& options)
    : options_(options) {
  const int64_t c = options.channels;
  if (options.heads <= 0 || c % options.heads != 0) {
    throw Error("Transformer2DModel: channels " + std::to_string(c) + " not divisible by heads " +
                std::to_string(options.heads));
  }
  norm_ = register_module("norm", nn::GroupNorm(options.groups, c, 1e-6));
  if (options.use_linear_projection) {
    proj_in_linear_ = register_module("proj_in", nn::Linear(c, c));
  } else {
    proj_in_conv_ = register_module("proj_in", nn::Conv2d(c, c, 1));
  }
  auto list = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers; ++i) {
    blocks_.emplace_back(c, options.heads, c / options.heads, options.context_dim,
                         options.upcast_attention);
    list->push_back(blocks_.back());
  }
  if (options.use_linear_projection) {
    proj_out_linear_ = register_module("proj_out", nn::Linear(c, c));
  } else {
    proj_out_conv_ = register_module("proj_out", nn::Conv2d(c, c, 1));
  }
}

// diffusers Transformer2DModel._operate_on_continuous_inputs / _get_output_for_continuous_inputs:
// GroupNorm, proj_in (before the [B, HW, C] flatten for conv, after it for
// linear), the blocks, proj_out, plus the input residual.
torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& x,
                                              const torch::Tensor& context) {
  const auto b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto hs = norm_(x);
  if (proj_in_conv_) {
    hs = proj_in_conv_(hs).permute({0, 2, 3, 1}).reshape({b, h * w, c});
  } else {
    hs = proj_in_linear_(hs.permute({0, 2, 3, 1}).reshape({b, h * w, c}));
  }
  for (auto& block : blocks_) hs = block(hs, context);
  if (proj_out_conv_) {
    hs = proj_out_conv_(hs.reshape({b, h, w, c}).permute({0, 3, 1, 2}).contiguous());
  } else {
    hs = proj_out_linear_(hs).reshape({b, h, w, c}).permute({0, 3, 1, 2}).contiguous();
  }
  return hs + x;
}

}  // namespace sdgen::nn
