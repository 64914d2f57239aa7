#include "sdgen/vae.h"

#include <algorithm>
#include <vector>
#include "sdgen/layers.h"

#include <string>

#include "nn/vae_blocks.h"
#include "sdgen/error.h"
#include "sdgen/weights.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

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
    quant_conv_ = register_module("quant_conv", nn::Conv2d(2 * latent, 2 * latent, 1));
  }
  if (config.use_post_quant_conv) {
    post_quant_conv_ = register_module("post_quant_conv", nn::Conv2d(latent, latent, 1));
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
#if defined(__GLIBC__)
  // The UNet's freed activations stay in malloc's heap (init_cpu_runtime
  // never trims it): given back here, before the decoder's large tensors are
  // mapped, the two stages' peaks no longer add up (SD1.5 512x512: issue 33,
  // docs/performance.md). The next image's UNet faults them in again, a
  // fraction of a second beside its steps.
  if (z.is_cpu()) malloc_trim(0);
#endif
  make_weights_resident(*this);  // weights kept as stored: this model's pages in
  auto h = post_quant_conv_ ? post_quant_conv_(z) : z;
  return decoder_->forward(h);
}

// diffusers AutoencoderKL.tiled_decode with blend_v / blend_h: tiles start
// every tile*(1-overlap) latent pixels; each decoded tile is blended with the
// one above and the one to its left over `blend` image rows/columns, then
// cropped to tile_sample - blend and the crops concatenated.
torch::Tensor AutoencoderKLImpl::tiled_decode(const torch::Tensor& z, int64_t tile_latent,
                                              double overlap) {
  if (z.dim() != 4 || (z.size(2) <= tile_latent && z.size(3) <= tile_latent)) return decode(z);
  const int64_t factor = downsample_factor();
  const int64_t tile_sample = tile_latent * factor;
  const auto stride = static_cast<int64_t>(static_cast<double>(tile_latent) * (1.0 - overlap));
  const auto blend_extent = static_cast<int64_t>(static_cast<double>(tile_sample) * overlap);
  const int64_t row_limit = tile_sample - blend_extent;
  if (stride <= 0) throw Error("VAE tiling: overlap must be below 1");
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t i = 0; i < z.size(2); i += stride) {
    std::vector<torch::Tensor> row;
    for (int64_t j = 0; j < z.size(3); j += stride) {
      auto tile = z.narrow(2, i, std::min(tile_latent, z.size(2) - i))
                      .narrow(3, j, std::min(tile_latent, z.size(3) - j));
      row.push_back(decode(tile).contiguous());
    }
    rows.push_back(std::move(row));
  }
  // blend_v / blend_h: b's first rows (columns) fade in over a's last ones.
  auto blend = [](const torch::Tensor& a, torch::Tensor b, int64_t extent, int64_t dim) {
    extent = std::min({a.size(dim), b.size(dim), extent});
    for (int64_t y = 0; y < extent; ++y) {
      const double w = static_cast<double>(y) / static_cast<double>(extent);
      auto target = b.select(dim, y);
      target.copy_(a.select(dim, a.size(dim) - extent + y) * (1.0 - w) + target * w);
    }
    return b;
  };
  std::vector<torch::Tensor> result_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<torch::Tensor> result_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      auto tile = rows[i][j];
      if (i > 0) tile = blend(rows[i - 1][j], tile, blend_extent, 2);
      if (j > 0) tile = blend(rows[i][j - 1], tile, blend_extent, 3);
      result_row.push_back(tile.narrow(2, 0, std::min(row_limit, tile.size(2)))
                               .narrow(3, 0, std::min(row_limit, tile.size(3))));
    }
    result_rows.push_back(torch::cat(result_row, 3));
  }
  return torch::cat(result_rows, 2);
}

// diffusers AutoencoderKL._encode + DiagonalGaussianDistribution:
// moments = quant_conv(encoder(x)); mean, logvar = chunk(2, dim=1);
// logvar clamped to [-30, 20]; std = exp(0.5 * logvar).
DiagonalGaussian AutoencoderKLImpl::encode(const torch::Tensor& image) {
  if (image.dim() != 4 || image.size(1) != config_.in_channels) {
    throw Error("VAE encode: image must be [B, " + std::to_string(config_.in_channels) +
                ", H, W], got " + shape_string(image.sizes()));
  }
  make_weights_resident(*this);
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
