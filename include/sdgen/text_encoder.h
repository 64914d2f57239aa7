#pragma once

// CLIP text transformer (transformers' CLIPTextModel). Parameter names equal
// the diffusers-folder checkpoint keys without the "text_model." prefix
// (e.g. "encoder.layers.0.self_attn.q_proj.weight").

#include <memory>
#include <vector>
#include "sdgen/layers.h"

#include <torch/torch.h>

#include "sdgen/config.h"

namespace sdgen {

struct CLIPTextOutput {
  torch::Tensor hidden;  // [B, 77, hidden]: last layer (clip_skip 1) or the chosen earlier layer
  torch::Tensor pooled;  // [B, hidden]: final-layer-normed last state at the eos position
  // [B, projection_dim]: text_projection(pooled) with_projection, else undefined.
  torch::Tensor text_embeds;
};

// How CLIPTextModel::forward returns a layer chosen by clip_skip.
enum class HiddenNorm {
  final_layer_norm,  // through final_layer_norm (SD1/SD2 pipelines)
  none,              // transformers' hidden_states[-clip_skip] as is (SDXL)
};

// Token embeddings replaced by given vectors (textual inversion): rows
// `position` .. position + vectors.size(0) - 1 of batch row `row`, before the
// position embedding is added (A1111's EmbeddingsWithFixes, diffusers' added
// tokens).
struct TokenEmbeddingOverride {
  int64_t row = 0;
  int64_t position = 0;
  torch::Tensor vectors;  // [n, hidden]; rows past the sequence's end are dropped
};

struct CLIPTextEmbeddingsImpl;
struct CLIPEncoderImpl;

class CLIPTextModelImpl : public torch::nn::Module {
 public:
  explicit CLIPTextModelImpl(const CLIPTextConfig& config);

  // clip_skip follows A1111: 1 = last layer, 2 = penultimate layer, ...; the
  // chosen hidden state is passed through final_layer_norm either way (as
  // diffusers' StableDiffusionPipeline does for clip_skip). input_ids: [B, L]
  // integer ids, L <= max_position_embeddings; clip_skip in [1, num_hidden_layers].
  // With HiddenNorm::none the chosen state is transformers'
  // hidden_states[-clip_skip] unnormalized (SDXL conditions on
  // hidden_states[-2]).
  CLIPTextOutput forward(const torch::Tensor& input_ids, int clip_skip = 1,
                         HiddenNorm norm = HiddenNorm::final_layer_norm,
                         const std::vector<TokenEmbeddingOverride>& overrides = {});

  const CLIPTextConfig& config() const { return config_; }

 private:
  CLIPTextConfig config_;
  // Submodules are registered under the checkpoint names (embeddings, encoder,
  // final_layer_norm); their types are private to text_encoder.cpp.
  std::shared_ptr<CLIPTextEmbeddingsImpl> embeddings_;
  std::shared_ptr<CLIPEncoderImpl> encoder_;
  nn::LayerNorm final_layer_norm_{nullptr};
  nn::Linear text_projection_{nullptr};  // with_projection only
};
TORCH_MODULE(CLIPTextModel);

}  // namespace sdgen
