// The default model's architecture and its sizes (train.h).

#include <string>

#include "sdgen/error.h"
#include "train/train.h"

namespace sdgen::train {

torch::Tensor to_model_input(const torch::Tensor& images) {
  return images.permute({0, 3, 1, 2}).to(torch::kFloat32).div(127.5).sub(1.0).contiguous();
}

nlohmann::json DemoSizes::to_json() const {
  return {{"text_layers", text_layers},
          {"text_width", text_width},
          {"attention_levels", attention_levels}};
}

DemoSizes DemoSizes::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw Error("architecture sizes: not a JSON object");
  DemoSizes sizes;
  for (const auto& [key, value] : j.items()) {
    int* field = key == "text_layers"        ? &sizes.text_layers
                 : key == "text_width"       ? &sizes.text_width
                 : key == "attention_levels" ? &sizes.attention_levels
                                             : nullptr;
    if (!field) throw Error("architecture sizes: unknown key \"" + key + "\"");
    if (!value.is_number_integer())
      throw Error("architecture sizes: " + key + " is not an integer");
    *field = value.get<int>();
  }
  sizes.validate();
  return sizes;
}

void DemoSizes::validate() const {
  if (text_layers < 1 || text_layers > 12)
    throw Error("text_layers must be 1-12, got " + std::to_string(text_layers));
  if (text_width < 16 || text_width > 512 || text_width % 4 != 0)
    throw Error("text_width must be a multiple of 4 in 16-512, got " + std::to_string(text_width));
  if (attention_levels < 1 || attention_levels > 4)
    throw Error("attention_levels must be 1-4, got " + std::to_string(attention_levels));
}

DemoArchitecture demo_architecture(int vocab_size, int bos_id, int eos_id, int pad_id,
                                   const DemoSizes& sizes) {
  sizes.validate();
  DemoArchitecture a;
  a.text.vocab_size = vocab_size;
  a.text.hidden_size = sizes.text_width;
  a.text.intermediate_size = 4 * sizes.text_width;
  a.text.num_hidden_layers = sizes.text_layers;
  a.text.num_attention_heads = 4;
  a.text.max_position_embeddings = 77;
  a.text.projection_dim = sizes.text_width;
  a.text.bos_token_id = bos_id;
  a.text.eos_token_id = eos_id;
  a.text.pad_token_id = pad_id;

  // Cross-attention at the coarsest levels (by default two: 16x16 and 8x8
  // latents, where shapes, colours and places are decided); plain ResNet
  // levels above them.
  a.unet.block_out_channels = {16, 32, 64, 128};
  const int levels = static_cast<int>(a.unet.block_out_channels.size());
  a.unet.down_block_types.clear();
  a.unet.up_block_types.clear();
  for (int i = 0; i < levels; ++i) {
    const bool attention = i >= levels - sizes.attention_levels;
    a.unet.down_block_types.push_back(attention ? "CrossAttnDownBlock2D" : "DownBlock2D");
    a.unet.up_block_types.insert(a.unet.up_block_types.begin(),
                                 attention ? "CrossAttnUpBlock2D" : "UpBlock2D");
  }
  a.unet.layers_per_block = 1;
  a.unet.attention_head_dim = {4, 4, 4, 4};
  a.unet.transformer_layers_per_block = {1, 1, 1, 1};
  a.unet.cross_attention_dim = sizes.text_width;
  a.unet.norm_num_groups = 8;
  a.unet.sample_size = 64;

  a.vae.block_out_channels = {16, 32, 64, 64};
  a.vae.layers_per_block = 1;
  a.vae.norm_num_groups = 8;
  a.vae.mid_block_add_attention = false;
  a.vae.sample_size = 512;
  return a;
}

}  // namespace sdgen::train
