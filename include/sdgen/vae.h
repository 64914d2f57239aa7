#pragma once

// diffusers AutoencoderKL (encoder, decoder, quant convs), built from its
// config.json. Parameter names equal the diffusers checkpoint keys
// (e.g. "decoder.mid_block.attentions.0.to_q.weight").

#include <memory>
#include "sdgen/layers.h"

#include <torch/torch.h>

#include "sdgen/config.h"

namespace sdgen {

namespace nn {
class VAEEncoderImpl;
class VAEDecoderImpl;
}  // namespace nn

struct DiagonalGaussian {
  torch::Tensor mean;
  torch::Tensor logvar;  // clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution
  torch::Tensor std;
};

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const VAEConfig& config);

  // z: latents already divided by scaling_factor, [B, latent, h, w]
  // -> image [B, out_channels, 8h, 8w], nominally in [-1, 1].
  torch::Tensor decode(const torch::Tensor& z);
  // The same in overlapping tiles of `tile_latent` latent pixels (diffusers'
  // AutoencoderKL.tiled_decode: tiles overlap by a quarter and are blended
  // linearly), so memory stays that of one tile whatever the image size.
  // Latents no larger than one tile are decoded in one piece.
  torch::Tensor tiled_decode(const torch::Tensor& z, int64_t tile_latent = 64,
                             double overlap = 0.25);
  // image [B, in_channels, H, W] in [-1, 1] -> posterior over (unscaled) latents.
  DiagonalGaussian encode(const torch::Tensor& image);

  const VAEConfig& config() const { return config_; }
  int downsample_factor() const;  // 2^(blocks-1), 8 for SD

 private:
  VAEConfig config_;
  // Encoder / decoder are defined in src/nn/vae_blocks.h (private), hence the pointers.
  std::shared_ptr<nn::VAEEncoderImpl> encoder_;
  std::shared_ptr<nn::VAEDecoderImpl> decoder_;
  nn::Conv2d quant_conv_{nullptr};
  nn::Conv2d post_quant_conv_{nullptr};
};
TORCH_MODULE(AutoencoderKL);

}  // namespace sdgen
