#include "nn/vae_blocks.h"
#include "sdgen/layers.h"

#include "nn/attention.h"
#include "sdgen/error.h"

namespace sdgen::nn {

namespace F = torch::nn::functional;

namespace {

// diffusers' Encoder / Decoder build every GroupNorm with eps 1e-6.
constexpr double kVAEEps = 1e-6;

ResnetBlock2D make_resnet(int64_t in, int64_t out, int64_t groups) {
  ResnetBlock2DOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.temb_channels = 0;
  o.groups = groups;
  o.eps = kVAEEps;
  return ResnetBlock2D(o);
}

nn::Conv2d conv3x3(int64_t in, int64_t out) { return nn::Conv2d(in, out, 3, 1, 1); }

}  // namespace

SpatialSelfAttentionImpl::SpatialSelfAttentionImpl(int64_t channels, int64_t groups, double eps,
                                                   int64_t heads)
    : heads_(heads) {
  if (heads <= 0 || channels % heads != 0) {
    throw Error("VAE attention: " + std::to_string(channels) + " channels not divisible by " +
                std::to_string(heads) + " heads");
  }
  group_norm_ = register_module("group_norm", nn::GroupNorm(groups, channels, eps));
  to_q_ = register_module("to_q", nn::Linear(channels, channels));
  to_k_ = register_module("to_k", nn::Linear(channels, channels));
  to_v_ = register_module("to_v", nn::Linear(channels, channels));
  auto to_out = register_module("to_out", torch::nn::ModuleList());
  out_proj_ = nn::Linear(channels, channels);
  to_out->push_back(out_proj_);
}

// diffusers AttnProcessor2_0 on a 4-D input with residual_connection=True and
// rescale_output_factor 1: group_norm, flatten to [B, HW, C], attention,
// to_out.0, back to [B, C, H, W], + residual.
torch::Tensor SpatialSelfAttentionImpl::forward(const torch::Tensor& x) {
  const auto b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto hs = group_norm_(x).view({b, c, h * w}).transpose(1, 2);
  auto q = split_heads(to_q_(hs), heads_);
  auto k = split_heads(to_k_(hs), heads_);
  auto v = split_heads(to_v_(hs), heads_);
  auto out = out_proj_(merge_heads(attention(q, k, v)));
  return out.transpose(1, 2).reshape({b, c, h, w}) + x;
}

// diffusers UNetMidBlock2D.__init__ with temb_channels=None, attention_head_dim = channels
// (one head), resnet_groups = norm_num_groups.
VAEMidBlockImpl::VAEMidBlockImpl(int64_t channels, int64_t groups, double eps, bool add_attention) {
  auto attentions = add_attention ? register_module("attentions", torch::nn::ModuleList())
                                  : torch::nn::ModuleList(nullptr);
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  resnets_.push_back(make_resnet(channels, channels, groups));
  resnets->push_back(resnets_.back());
  if (add_attention) {
    attentions_.emplace_back(channels, groups, eps, 1);
    attentions->push_back(attentions_.back());
  }
  resnets_.push_back(make_resnet(channels, channels, groups));
  resnets->push_back(resnets_.back());
}

torch::Tensor VAEMidBlockImpl::forward(torch::Tensor x) {
  x = resnets_[0](x);
  if (!attentions_.empty()) x = attentions_[0](x);
  return resnets_[1](x);
}

VAEEncoderImpl::VAEEncoderImpl(const VAECoderOptions& options) {
  const auto& channels = options.block_out_channels;
  const size_t blocks = channels.size();
  conv_in_ = register_module("conv_in", conv3x3(options.in_channels, channels[0]));
  auto down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t output_channel = channels[0];
  for (size_t i = 0; i < blocks; ++i) {
    const int64_t input_channel = output_channel;
    output_channel = channels[i];
    auto block = std::make_shared<torch::nn::Module>();
    auto resnets = block->register_module("resnets", torch::nn::ModuleList());
    resnets_.emplace_back();
    for (int64_t j = 0; j < options.layers_per_block; ++j) {
      resnets_.back().push_back(
          make_resnet(j == 0 ? input_channel : output_channel, output_channel, options.groups));
      resnets->push_back(resnets_.back().back());
    }
    downsamplers_.push_back(Downsample2D(nullptr));
    if (i + 1 < blocks) {
      auto samplers = block->register_module("downsamplers", torch::nn::ModuleList());
      // DownEncoderBlock2D uses downsample_padding=0: pad (0,1,0,1), then conv stride 2.
      downsamplers_.back() = Downsample2D(output_channel, output_channel, 0);
      samplers->push_back(downsamplers_.back());
    }
    down_blocks->push_back(block);
  }
  mid_block_ = register_module("mid_block", VAEMidBlock(channels.back(), options.groups, kVAEEps,
                                                        options.mid_block_add_attention));
  conv_norm_out_ =
      register_module("conv_norm_out", nn::GroupNorm(options.groups, channels.back(), kVAEEps));
  conv_out_ = register_module("conv_out", conv3x3(channels.back(), options.out_channels));
}

// diffusers Encoder.forward.
torch::Tensor VAEEncoderImpl::forward(const torch::Tensor& x) {
  auto h = conv_in_(x);
  for (size_t i = 0; i < resnets_.size(); ++i) {
    for (auto& resnet : resnets_[i]) h = resnet(h);
    if (downsamplers_[i]) h = downsamplers_[i](h);
  }
  h = mid_block_(h);
  return conv_out_(conv_norm_out_->forward_silu(h));
}

VAEDecoderImpl::VAEDecoderImpl(const VAECoderOptions& options) {
  const auto& channels = options.block_out_channels;
  const size_t blocks = channels.size();
  conv_in_ = register_module("conv_in", conv3x3(options.in_channels, channels.back()));
  mid_block_ = register_module("mid_block", VAEMidBlock(channels.back(), options.groups, kVAEEps,
                                                        options.mid_block_add_attention));
  auto up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  int64_t output_channel = channels.back();
  for (size_t i = 0; i < blocks; ++i) {
    const int64_t prev_output_channel = output_channel;
    output_channel = channels[blocks - 1 - i];
    auto block = std::make_shared<torch::nn::Module>();
    auto resnets = block->register_module("resnets", torch::nn::ModuleList());
    resnets_.emplace_back();
    for (int64_t j = 0; j < options.layers_per_block + 1; ++j) {
      resnets_.back().push_back(make_resnet(j == 0 ? prev_output_channel : output_channel,
                                            output_channel, options.groups));
      resnets->push_back(resnets_.back().back());
    }
    upsamplers_.push_back(Upsample2D(nullptr));
    if (i + 1 < blocks) {
      auto samplers = block->register_module("upsamplers", torch::nn::ModuleList());
      upsamplers_.back() = Upsample2D(output_channel, output_channel);
      samplers->push_back(upsamplers_.back());
    }
    up_blocks->push_back(block);
  }
  conv_norm_out_ =
      register_module("conv_norm_out", nn::GroupNorm(options.groups, channels[0], kVAEEps));
  conv_out_ = register_module("conv_out", conv3x3(channels[0], options.out_channels));
}

// diffusers Decoder.forward (no latent_embeds / spatial norm).
torch::Tensor VAEDecoderImpl::forward(const torch::Tensor& z) {
  auto h = mid_block_(conv_in_(z));
  for (size_t i = 0; i < resnets_.size(); ++i) {
    for (auto& resnet : resnets_[i]) h = resnet(h);
    if (upsamplers_[i]) h = upsamplers_[i](h);
  }
  return conv_out_(conv_norm_out_->forward_silu(h));
}

}  // namespace sdgen::nn
