#include "sdgen/vae.h"

#include <string>

#include "nn/vae_blocks.h"
#include "sdgen/error.h"
#include "sdgen/weights.h"

namespace sdgen {

// diffusers AutoencoderKL.__init__ (Encoder with double_z, Decoder, 1x1 quant convs).
AutoencoderKLImpl::AutoencoderKLImpl(const VAEConfig& config) : config_(config) {
  if (config.block_out_channels.empty()) throw Error("VAE config: empty block_out_channels");
  if (config.act_fn != "silu" && config.act_fn != "swish") {
    throw Error("VAE config: unsupported act_fn '" + config.act_fn + "' (expected silu)");
  }
  for (int c : config.block_out_channels) {
    if (config.norm_num_groups <= 0 || c % config.norm_num_groups != 0) {
      throw Error("VAE config: block_out_channels entry " + std::to_string(c) +
                  " is not divisible by norm_num_groups " + std::to_string(config.norm_num_groups));
    }
  }
  const int64_t latent = config.latent_channels;
  nn::VAECoderOptions o;
  o.block_out_channels.assign(config.block_out_channels.begin(), config.block_out_channels.end());
  o.layers_per_block = config.layers_per_block;
  o.groups = config.norm_num_groups;
  o.mid_block_add_attention = config.mid_block_add_attention;

  o.in_channels = config.in_channels;
  o.out_channels = 2 * latent;
  encoder_ = register_module("encoder", std::make_shared<nn::VAEEncoderImpl>(o));
  o.in_channels = latent;
  o.out_channels = config.out_channels;
  decoder_ = register_module("decoder", std::make_shared<nn::VAEDecoderImpl>(o));
  if (config.use_quant_conv) {
    quant_conv_ = register_module(
        "quant_conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(2 * latent, 2 * latent, 1)));
  }
  if (config.use_post_quant_conv) {
    post_quant_conv_ = register_module(
        "post_quant_conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(latent, latent, 1)));
  }
}

int AutoencoderKLImpl::downsample_factor() const {
  return 1 << (config_.block_out_channels.size() - 1);
}

// diffusers AutoencoderKL._decode: post_quant_conv, then the decoder.
torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& z) {
  if (z.dim() != 4 || z.size(1) != config_.latent_channels) {
    throw Error("VAE decode: z must be [B, " + std::to_string(config_.latent_channels) +
                ", h, w], got " + shape_string(z.sizes()));
  }
  auto h = post_quant_conv_ ? post_quant_conv_(z) : z;
  return decoder_->forward(h);
}

// diffusers AutoencoderKL._encode + DiagonalGaussianDistribution:
// moments = quant_conv(encoder(x)); mean, logvar = chunk(2, dim=1);
// logvar clamped to [-30, 20]; std = exp(0.5 * logvar).
DiagonalGaussian AutoencoderKLImpl::encode(const torch::Tensor& image) {
  if (image.dim() != 4 || image.size(1) != config_.in_channels) {
    throw Error("VAE encode: image must be [B, " + std::to_string(config_.in_channels) +
                ", H, W], got " + shape_string(image.sizes()));
  }
  auto moments = encoder_->forward(image);
  if (quant_conv_) moments = quant_conv_(moments);
  auto parts = moments.chunk(2, 1);
  DiagonalGaussian posterior;
  posterior.mean = parts[0];
  posterior.logvar = parts[1].clamp(-30.0, 20.0);
  posterior.std = (0.5 * posterior.logvar).exp();
  return posterior;
}

}  // namespace sdgen
