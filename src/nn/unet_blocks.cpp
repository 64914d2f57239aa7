#include "nn/unet_blocks.h"

#include "sdgen/error.h"

namespace sdgen::nn {

namespace {

Transformer2DModel make_transformer(int64_t channels, int64_t groups,
                                    const CrossAttnSettings& attn) {
  Transformer2DOptions o;
  o.channels = channels;
  o.heads = attn.heads;
  o.context_dim = attn.context_dim;
  o.num_layers = attn.transformer_layers;
  o.groups = groups;
  o.use_linear_projection = attn.use_linear_projection;
  o.upcast_attention = attn.upcast_attention;
  return Transformer2DModel(o);
}

ResnetBlock2D make_resnet(int64_t in, int64_t out, int64_t temb, int64_t groups, double eps,
                          double output_scale_factor = 1.0) {
  ResnetBlock2DOptions o;
  o.in_channels = in;
  o.out_channels = out;
  o.temb_channels = temb;
  o.groups = groups;
  o.eps = eps;
  o.output_scale_factor = output_scale_factor;
  return ResnetBlock2D(o);
}

}  // namespace

// diffusers CrossAttnDownBlock2D / DownBlock2D __init__: resnet i maps
// (i == 0 ? in : out) -> out; one Transformer2DModel per resnet.
UNetDownBlockImpl::UNetDownBlockImpl(const UNetBlockOptions& options) {
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  torch::nn::ModuleList attentions{nullptr};
  if (options.cross_attention) attentions = register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers; ++i) {
    const int64_t in = i == 0 ? options.in_channels : options.out_channels;
    resnets_.push_back(
        make_resnet(in, options.out_channels, options.temb_channels, options.groups, options.eps));
    resnets->push_back(resnets_.back());
    if (options.cross_attention) {
      attentions_.push_back(make_transformer(options.out_channels, options.groups, options.attn));
      attentions->push_back(attentions_.back());
    }
  }
  if (options.add_sampler) {
    auto samplers = register_module("downsamplers", torch::nn::ModuleList());
    downsampler_ =
        Downsample2D(options.out_channels, options.out_channels, options.downsample_padding);
    samplers->push_back(downsampler_);
  }
}

// diffusers CrossAttnDownBlock2D.forward: every resnet(+attention) output and the
// downsampled output are skip connections.
torch::Tensor UNetDownBlockImpl::forward(torch::Tensor x, const torch::Tensor& temb,
                                         const torch::Tensor& context,
                                         std::vector<torch::Tensor>& skips) {
  for (size_t i = 0; i < resnets_.size(); ++i) {
    x = resnets_[i](x, temb);
    if (!attentions_.empty()) x = attentions_[i](x, context);
    skips.push_back(x);
  }
  if (downsampler_) {
    x = downsampler_(x);
    skips.push_back(x);
  }
  return x;
}

// diffusers UNetMidBlock2DCrossAttn.__init__ (resnet_time_scale_shift="default").
UNetMidBlockCrossAttnImpl::UNetMidBlockCrossAttnImpl(int64_t channels, int64_t temb_channels,
                                                     int64_t groups, double eps,
                                                     double output_scale_factor,
                                                     const CrossAttnSettings& attn,
                                                     int64_t num_layers) {
  auto attentions = register_module("attentions", torch::nn::ModuleList());
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i <= num_layers; ++i) {
    resnets_.push_back(
        make_resnet(channels, channels, temb_channels, groups, eps, output_scale_factor));
    resnets->push_back(resnets_.back());
  }
  for (int64_t i = 0; i < num_layers; ++i) {
    attentions_.push_back(make_transformer(channels, groups, attn));
    attentions->push_back(attentions_.back());
  }
}

torch::Tensor UNetMidBlockCrossAttnImpl::forward(torch::Tensor x, const torch::Tensor& temb,
                                                 const torch::Tensor& context) {
  x = resnets_[0](x, temb);
  for (size_t i = 0; i < attentions_.size(); ++i) {
    x = attentions_[i](x, context);
    x = resnets_[i + 1](x, temb);
  }
  return x;
}

// diffusers CrossAttnUpBlock2D / UpBlock2D __init__: resnet i takes
// (i == 0 ? prev_output : out) channels plus the skip's channels
// (in for the last resnet, out otherwise).
UNetUpBlockImpl::UNetUpBlockImpl(const UNetBlockOptions& options) {
  auto resnets = register_module("resnets", torch::nn::ModuleList());
  torch::nn::ModuleList attentions{nullptr};
  if (options.cross_attention) attentions = register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers; ++i) {
    const int64_t skip = i == options.num_layers - 1 ? options.in_channels : options.out_channels;
    const int64_t in = i == 0 ? options.prev_output_channels : options.out_channels;
    resnets_.push_back(make_resnet(in + skip, options.out_channels, options.temb_channels,
                                   options.groups, options.eps));
    resnets->push_back(resnets_.back());
    if (options.cross_attention) {
      attentions_.push_back(make_transformer(options.out_channels, options.groups, options.attn));
      attentions->push_back(attentions_.back());
    }
  }
  if (options.add_sampler) {
    auto samplers = register_module("upsamplers", torch::nn::ModuleList());
    upsampler_ = Upsample2D(options.out_channels, options.out_channels);
    samplers->push_back(upsampler_);
  }
}

// diffusers CrossAttnUpBlock2D.forward: concatenate the newest skip on channels
// before each resnet; upsample to `upsample_size` at the end.
torch::Tensor UNetUpBlockImpl::forward(torch::Tensor x, const torch::Tensor& temb,
                                       const torch::Tensor& context,
                                       std::vector<torch::Tensor>& skips,
                                       const std::vector<int64_t>& upsample_size) {
  for (size_t i = 0; i < resnets_.size(); ++i) {
    if (skips.empty()) throw Error("UNet up block: ran out of skip connections");
    x = torch::cat({x, skips.back()}, 1);
    skips.pop_back();
    x = resnets_[i](x, temb);
    if (!attentions_.empty()) x = attentions_[i](x, context);
  }
  if (upsampler_) x = upsampler_(x, upsample_size);
  return x;
}

}  // namespace sdgen::nn
