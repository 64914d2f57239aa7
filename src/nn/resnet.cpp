#include "nn/resnet.h"
#include "sdgen/layers.h"

namespace sdgen::nn {

namespace F = torch::nn::functional;

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DOptions& options) : options_(options) {
  const auto in = options.in_channels, out = options.out_channels;
  norm1_ = register_module("norm1", nn::GroupNorm(options.groups, in, options.eps));
  conv1_ = register_module("conv1", nn::Conv2d(in, out, 3, 1, 1));
  if (options.temb_channels > 0) {
    time_emb_proj_ = register_module("time_emb_proj", nn::Linear(options.temb_channels, out));
  }
  norm2_ = register_module("norm2", nn::GroupNorm(options.groups, out, options.eps));
  conv2_ = register_module("conv2", nn::Conv2d(out, out, 3, 1, 1));
  if (in != out) {
    conv_shortcut_ = register_module("conv_shortcut", nn::Conv2d(in, out, 1, 1, 0));
  }
}

// Follows diffusers ResnetBlock2D.forward with time_embedding_norm="default":
// h = conv1(silu(norm1(x))) + proj(silu(temb)); h = conv2(silu(norm2(h)));
// out = (shortcut(x) + h) / output_scale_factor.
torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  auto h = conv1_(norm1_->forward_silu(x));
  if (time_emb_proj_ && temb.defined()) {
    auto t = time_emb_proj_(F::silu(temb));
    h = h + t.unsqueeze(-1).unsqueeze(-1);
  }
  h = conv2_(norm2_->forward_silu(h));
  auto shortcut = conv_shortcut_ ? conv_shortcut_(x) : x;
  auto out = shortcut + h;
  if (options_.output_scale_factor != 1.0) out = out / options_.output_scale_factor;
  return out;
}

}  // namespace sdgen::nn
