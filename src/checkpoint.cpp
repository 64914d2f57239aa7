// Single-file (LDM layout) checkpoints: which family a file is and the
// diffusers configs of its parts, inferred from tensor shapes as diffusers'
// loaders/single_file_utils.py (create_unet_diffusers_config, ...) reads
// the original configs. The renaming of the weights is in
// checkpoint_convert.cpp.

#include "sdgen/checkpoint.h"

#include <algorithm>
#include <initializer_list>
#include <vector>

#include "checkpoint_keys.h"
#include "sdgen/error.h"

namespace sdgen {
namespace {

using namespace ldm_keys;

// OpenCLIP ViT-H/14 (SD2's text tower) has 24 layers; SD2 conditions on the
// penultimate one, so diffusers' SD2 text encoder keeps 23.
constexpr int kOpenCLIPTowerLayers = 24;
// Both CLIP ViT-L/14 (SD1) and OpenCLIP ViT-H/14 (SD2) use 64 channels per head,
// and so do SD2's UNet attentions (create_unet_diffusers_config: num_head_channels 64).
constexpr int kChannelsPerHead = 64;
constexpr int kSD1UNetHeads = 8;  // SD1.x v1-inference.yaml: num_heads 8

const torch::Tensor& require(const TensorMap& all, const std::string& key, const char* purpose) {
  auto it = all.find(key);
  if (it == all.end())
    throw Error("checkpoint: tensor '" + key + "' not found (needed to " + purpose + ")");
  return it->second;
}

const torch::Tensor& require_dim(const TensorMap& all, const std::string& key, int64_t dim,
                                 const char* purpose) {
  const torch::Tensor& t = require(all, key, purpose);
  if (t.dim() != dim)
    throw Error("checkpoint: tensor '" + key + "' has shape " + shape_string(t.sizes()) +
                ", expected " + std::to_string(dim) + " dimensions");
  return t;
}

bool any_key_contains(const TensorMap& all, std::initializer_list<const char*> parts) {
  for (const auto& kv : all)
    for (const char* part : parts)
      if (kv.first.find(part) != std::string::npos) return true;
  return false;
}

// What a file without model.diffusion_model.* holds, for the error message.
std::string describe_non_checkpoint(const TensorMap& all) {
  if (any_key_contains(all, {"lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", ".lora_down.",
                             ".lora_A.", ".lora_B.", ".lora.down.", "hada_w1_", "lokr_w1"}))
    return "it looks like a LoRA (lora_* / lora_down / lora_A tensors), which modifies a model "
           "and is not one itself; give a full checkpoint as --model";
  if (has_prefix(all, "down_blocks.") || has_prefix(all, "time_embedding."))
    return "it looks like a diffusers-layout UNet file (down_blocks.*); load the diffusers model "
           "folder instead";
  const bool text = any_key_contains(all, {"text_model.", "resblocks.", "token_embedding"});
  const bool vae =
      any_key_contains(all, {"first_stage_model.", "encoder.down", "decoder.up", "quant_conv."});
  if (text && !vae) return "it holds only text-encoder weights, no UNet (model.diffusion_model.*)";
  if (vae && !text) return "it holds only VAE weights, no UNet (model.diffusion_model.*)";
  if (text && vae)
    return "it holds text-encoder and VAE weights but no UNet (model.diffusion_model.*)";
  return "it has no UNet (model.diffusion_model.*) tensors; first of its " +
         std::to_string(all.size()) + " keys is '" + all.begin()->first + "'";
}

// Width of the UNet's cross-attention context (attn2.to_k input), or -1.
int64_t unet_context_width(const TensorMap& all) {
  for (const auto& kv : with_prefix(all, kUNet))
    if (ends_with(kv.first, ".attn2.to_k.weight") && kv.second.dim() == 2) return kv.second.size(1);
  return -1;
}

}  // namespace

const char* family_name(ModelFamily family) {
  switch (family) {
    case ModelFamily::SD1:
      return "SD1";
    case ModelFamily::SD2:
      return "SD2";
    case ModelFamily::SDXL:
      return "SDXL";
  }
  return "?";
}

// ---- detection ---------------------------------------------------------------

ModelFamily detect_family(const TensorMap& all) {
  const std::string not_sd = "checkpoint is not a Stable Diffusion 1.x/2.x/XL single file: ";
  if (all.empty()) throw Error(not_sd + "it holds no tensors");
  if (has_prefix(all, "conditioner.embedders.") || has_prefix(all, kUNet + "label_emb.")) {
    const bool clip_l = has_prefix(all, kSDXLCLIPPrefix);
    const bool clip_g = has_prefix(all, kSDXLOpenCLIPPrefix);
    // The refiner (sd_xl_refiner_1.0) conditions on one OpenCLIP ViT-bigG,
    // stored as embedders.0, and on an aesthetic score.
    if (!clip_l && has_prefix(all, "conditioner.embedders.0.model."))
      throw Error(
          "checkpoint is an SDXL refiner (one OpenCLIP text encoder at "
          "conditioner.embedders.0.model.*, aesthetic-score conditioning), which sdgen does not "
          "run; give an SDXL base checkpoint");
    if (!has_prefix(all, kUNet))
      throw Error("checkpoint holds SDXL text encoders (conditioner.embedders.*) but no UNet (" +
                  kUNet + "*)");
    if (!clip_l || !clip_g)
      throw Error(
          std::string("SDXL checkpoint without its ") +
          (clip_l ? "second text encoder (OpenCLIP ViT-bigG, " + std::string(kSDXLOpenCLIPPrefix)
                  : "first text encoder (CLIP ViT-L, " + std::string(kSDXLCLIPPrefix)) +
          "*); SDXL needs both");
    if (!has_prefix(all, kUNet + "label_emb."))
      throw Error("checkpoint has SDXL text encoders but its UNet lacks '" + kUNet +
                  "label_emb.*' (the size conditioning every SDXL UNet has)");
    if (!all.count(kUNet + "input_blocks.0.0.weight"))
      throw Error(not_sd + "'" + kUNet + "input_blocks.0.0.weight' is missing");
    return ModelFamily::SDXL;
  }
  if (!has_prefix(all, kUNet)) throw Error(not_sd + describe_non_checkpoint(all));
  if (!all.count(kUNet + "input_blocks.0.0.weight"))
    throw Error(not_sd + "'" + kUNet +
                "input_blocks.0.0.weight' is missing, so the UNet is not the SD1/SD2 LDM UNet");

  const bool hf_clip = has_prefix(all, kCLIP);
  const bool open_clip = has_prefix(all, kOpenCLIP);
  if (hf_clip && open_clip)
    throw Error(not_sd + "it has both a CLIP (" + kCLIP + "*) and an OpenCLIP (" + kOpenCLIP +
                "*) text encoder");
  if (hf_clip) return ModelFamily::SD1;
  if (open_clip) return ModelFamily::SD2;

  // No text encoder in the file: SD1 cross-attends to 768-wide CLIP states,
  // SD2 to 1024-wide OpenCLIP states (diffusers' fetch_original_config_file_from_url
  // tests the same attn2.to_k width).
  const int64_t width = unet_context_width(all);
  if (width == 768) return ModelFamily::SD1;
  if (width == 1024) return ModelFamily::SD2;
  throw Error(not_sd + "it has no text encoder (cond_stage_model.*) and its UNet cross-attention " +
              "width is " + std::to_string(width) + ", neither 768 (SD1) nor 1024 (SD2)");
}

// ---- configs -----------------------------------------------------------------

// Follows create_unet_diffusers_config, reading the numbers it takes from the
// LDM yaml (model_channels, channel_mult, num_res_blocks, attention_resolutions,
// context_dim, use_linear_in_transformer, transformer_depth) off the tensor shapes.
UNetConfig infer_unet_config(const TensorMap& all, ModelFamily family) {
  const char* purpose = "infer the UNet config";
  auto has = [&](const std::string& key) { return all.count(kUNet + key) > 0; };
  auto get = [&](const std::string& key, int64_t dim) -> const torch::Tensor& {
    return require_dim(all, kUNet + key, dim, purpose);
  };

  UNetConfig config;
  const torch::Tensor& conv_in = get("input_blocks.0.0.weight", 4);
  config.in_channels = static_cast<int>(conv_in.size(1));
  config.out_channels = static_cast<int>(get("out.2.weight", 4).size(0));

  // input_blocks: 0 = conv_in, then per down block `layers_per_block` layers
  // and (except in the last block) one downsampler ("op").
  const int num_input = count_indexed(all, kUNet + "input_blocks.");
  int num_downsamplers = 0;
  for (int i = 1; i < num_input; ++i)
    if (has("input_blocks." + std::to_string(i) + ".0.op.weight")) ++num_downsamplers;
  const int num_blocks = num_downsamplers + 1;
  if (num_input % num_blocks != 0 || num_input / num_blocks < 2)
    throw Error("checkpoint: cannot infer the UNet block layout from " + std::to_string(num_input) +
                " input_blocks with " + std::to_string(num_downsamplers) + " downsamplers");
  const int per_block = num_input / num_blocks;  // layers_per_block + 1
  config.layers_per_block = per_block - 1;
  for (int b = 0; b + 1 < num_blocks; ++b) {
    const std::string op = "input_blocks." + std::to_string((b + 1) * per_block) + ".0.op.weight";
    if (!has(op))
      throw Error("checkpoint: expected the downsampler '" + kUNet + op + "' for " +
                  std::to_string(num_blocks) + " blocks of " +
                  std::to_string(config.layers_per_block) + " layers");
  }

  config.block_out_channels.clear();
  config.down_block_types.clear();
  config.transformer_layers_per_block.clear();
  const torch::Tensor* first_proj_in = nullptr;
  for (int b = 0; b < num_blocks; ++b) {
    const std::string layer = "input_blocks." + std::to_string(1 + b * per_block);
    config.block_out_channels.push_back(
        static_cast<int>(get(layer + ".0.out_layers.3.weight", 4).size(0)));
    const bool attention = has(layer + ".1.proj_in.weight");
    config.down_block_types.push_back(attention ? "CrossAttnDownBlock2D" : "DownBlock2D");
    int depth = 1;
    if (attention) {
      if (!first_proj_in) first_proj_in = &all.at(kUNet + layer + ".1.proj_in.weight");
      depth = count_indexed(all, kUNet + layer + ".1.transformer_blocks.");
    }
    config.transformer_layers_per_block.push_back(depth);
  }

  const int num_output = count_indexed(all, kUNet + "output_blocks.");
  if (num_output != num_blocks * per_block)
    throw Error("checkpoint: " + std::to_string(num_output) + " UNet output_blocks, expected " +
                std::to_string(num_blocks * per_block) + " for " + std::to_string(num_blocks) +
                " blocks of " + std::to_string(config.layers_per_block) + " layers");
  config.up_block_types.clear();
  for (int u = 0; u < num_blocks; ++u) {
    const bool attention =
        has("output_blocks." + std::to_string(u * per_block) + ".1.proj_in.weight");
    config.up_block_types.push_back(attention ? "CrossAttnUpBlock2D" : "UpBlock2D");
  }

  if (!has("middle_block.1.proj_in.weight"))
    throw Error("checkpoint: '" + kUNet +
                "middle_block.1.proj_in.weight' not found: only the cross-attention mid block "
                "(UNetMidBlock2DCrossAttn) of SD1/SD2 is supported");
  config.mid_block_type = "UNetMidBlock2DCrossAttn";
  if (!first_proj_in) first_proj_in = &all.at(kUNet + "middle_block.1.proj_in.weight");
  config.use_linear_projection = first_proj_in->dim() == 2;
  config.cross_attention_dim =
      static_cast<int>(get("middle_block.1.transformer_blocks.0.attn2.to_k.weight", 2).size(1));

  // Heads are not in the weights (diffusers' historical attention_head_dim = heads per block).
  config.num_attention_heads.clear();
  config.attention_head_dim.clear();
  for (size_t b = 0; b < config.block_out_channels.size(); ++b) {
    const int channels = config.block_out_channels[b];
    const int divisor = family == ModelFamily::SD1 ? kSD1UNetHeads : kChannelsPerHead;
    // SDXL's first block has no attention; its nominal head count is unused.
    if (family == ModelFamily::SDXL && config.down_block_types[b] == "DownBlock2D") {
      config.attention_head_dim.push_back(std::max(1, channels / kChannelsPerHead));
      continue;
    }
    if (channels % divisor != 0)
      throw Error("checkpoint: UNet block width " + std::to_string(channels) +
                  " is not a multiple of " + std::to_string(divisor) + ", so the " +
                  family_name(family) + " head count does not apply; use a config.json");
    config.attention_head_dim.push_back(family == ModelFamily::SD1 ? kSD1UNetHeads
                                                                   : channels / kChannelsPerHead);
  }
  if (family == ModelFamily::SDXL) {
    // stable-diffusion-xl-base-1.0's unet config: label_emb.0.0 takes the
    // pooled text embedding (the OpenCLIP projection's width) and 6 size/crop
    // ids of addition_time_embed_dim sinusoidal features each (1280 + 6 x 256).
    const int64_t adm_in = get("label_emb.0.0.weight", 2).size(1);
    const int64_t pooled =
        require_dim(all, std::string(kSDXLOpenCLIPPrefix) + "text_projection", 2, purpose).size(1);
    constexpr int64_t kTimeIds = 6;
    if (adm_in <= pooled || (adm_in - pooled) % kTimeIds != 0)
      throw Error("checkpoint: '" + kUNet + "label_emb.0.0.weight' takes " +
                  std::to_string(adm_in) + " inputs, not the pooled text width " +
                  std::to_string(pooled) + " plus 6 equal size/crop embeddings");
    config.addition_embed_type = "text_time";
    config.projection_class_embeddings_input_dim = static_cast<int>(adm_in);
    config.addition_time_embed_dim = static_cast<int>((adm_in - pooled) / kTimeIds);
    config.upcast_attention = false;
    config.sample_size = 128;
  } else if (family == ModelFamily::SD2) {
    // diffusers' stable-diffusion-2-1 unet config: attention upcast (fp16
    // overflow otherwise) and 768 px (96 latent) default size.
    config.upcast_attention = true;
    config.sample_size = 96;
  } else {
    config.upcast_attention = false;
    config.sample_size = 64;
  }
  return config;
}

// Follows create_vae_diffusers_config (ch * ch_mult, num_res_blocks, z_channels).
VAEConfig infer_vae_config(const TensorMap& all, ModelFamily family) {
  const char* purpose = "infer the VAE config";
  auto get = [&](const std::string& key, int64_t dim) -> const torch::Tensor& {
    return require_dim(all, kVAE + key, dim, purpose);
  };
  VAEConfig config;
  config.in_channels = static_cast<int>(get("encoder.conv_in.weight", 4).size(1));
  config.out_channels = static_cast<int>(get("decoder.conv_out.weight", 4).size(0));
  config.latent_channels = static_cast<int>(get("decoder.conv_in.weight", 4).size(1));
  const int num_blocks = count_indexed(all, kVAE + "encoder.down.");
  const int layers = count_indexed(all, kVAE + "encoder.down.0.block.");
  if (num_blocks == 0 || layers == 0)
    throw Error("checkpoint: no VAE encoder blocks (" + kVAE + "encoder.down.N.block.M.*) found");
  const int up_blocks = count_indexed(all, kVAE + "decoder.up.");
  const int up_layers = count_indexed(all, kVAE + "decoder.up.0.block.");
  if (up_blocks != num_blocks || up_layers != layers + 1)
    throw Error("checkpoint: VAE decoder has " + std::to_string(up_blocks) + " blocks of " +
                std::to_string(up_layers) + " layers, expected " + std::to_string(num_blocks) +
                " of " + std::to_string(layers + 1) + " (encoder: " + std::to_string(num_blocks) +
                " of " + std::to_string(layers) + ")");
  config.layers_per_block = layers;
  config.block_out_channels.clear();
  for (int i = 0; i < num_blocks; ++i)
    config.block_out_channels.push_back(static_cast<int>(
        get("encoder.down." + std::to_string(i) + ".block.0.conv2.weight", 4).size(0)));
  const int64_t moments = get("encoder.conv_out.weight", 4).size(0);
  if (moments != 2 * config.latent_channels)
    throw Error("checkpoint: VAE encoder.conv_out has " + std::to_string(moments) +
                " output channels, expected 2 x " + std::to_string(config.latent_channels) +
                " latent channels");
  config.use_quant_conv = all.count(kVAE + "quant_conv.weight") > 0;
  config.use_post_quant_conv = all.count(kVAE + "post_quant_conv.weight") > 0;
  config.mid_block_add_attention = has_prefix(all, kVAE + "encoder.mid.attn_1.");
  if (family == ModelFamily::SDXL) {
    // stable-diffusion-xl-base-1.0's vae config.
    config.scaling_factor = 0.13025;
    config.force_upcast = true;
    config.sample_size = 1024;
  }
  return config;
}

namespace {

CLIPTextConfig infer_text_config(const TensorMap& all, ModelFamily family, bool second) {
  const char* purpose = "infer the text encoder config";
  CLIPTextConfig config;
  const torch::Tensor* token = nullptr;
  const torch::Tensor* position = nullptr;
  const torch::Tensor* fc1 = nullptr;
  int layers = 0;
  if (family == ModelFamily::SD1 || (family == ModelFamily::SDXL && !second)) {
    // transformers' CLIPTextModel under cond_stage_model.transformer (older
    // files lack the "text_model." level), or SDXL's first embedder.
    const std::string base = family == ModelFamily::SD1 ? kCLIP : std::string(kSDXLCLIPPrefix);
    const std::string p = has_prefix(all, base + "text_model.") ? base + "text_model." : base;
    token = &require_dim(all, p + "embeddings.token_embedding.weight", 2, purpose);
    position = &require_dim(all, p + "embeddings.position_embedding.weight", 2, purpose);
    fc1 = &require_dim(all, p + "encoder.layers.0.mlp.fc1.weight", 2, purpose);
    layers = count_indexed(all, p + "encoder.layers.");
    config.hidden_act = "quick_gelu";
  } else {
    // OpenCLIP TextTransformer under cond_stage_model.model (FrozenOpenCLIPEmbedder),
    // or SDXL's second embedder (FrozenOpenCLIPEmbedder2).
    const std::string p = family == ModelFamily::SDXL ? kSDXLOpenCLIPPrefix : kOpenCLIP;
    token = &require_dim(all, p + "token_embedding.weight", 2, purpose);
    position = &require_dim(all, p + "positional_embedding", 2, purpose);
    fc1 = &require_dim(all, p + "transformer.resblocks.0.mlp.c_fc.weight", 2, purpose);
    const int tower = count_indexed(all, p + "transformer.resblocks.");
    // SDXL keeps every layer: its pooled output comes from the last one.
    layers = tower == kOpenCLIPTowerLayers && family == ModelFamily::SD2 ? tower - 1 : tower;
    config.hidden_act = "gelu";
    if (family == ModelFamily::SDXL) {
      const torch::Tensor& projection = require_dim(all, p + "text_projection", 2, purpose);
      config.with_projection = true;
      config.projection_dim = static_cast<int>(projection.size(1));
    }
    // SD2's tokenizer pads with "!" (id 0); bos/eos are CLIP's.
    config.pad_token_id = 0;
  }
  config.vocab_size = static_cast<int>(token->size(0));
  config.hidden_size = static_cast<int>(token->size(1));
  config.max_position_embeddings = static_cast<int>(position->size(0));
  config.intermediate_size = static_cast<int>(fc1->size(0));
  config.num_hidden_layers = layers;
  if (!config.with_projection) config.projection_dim = config.hidden_size;
  if (position->size(1) != config.hidden_size)
    throw Error("checkpoint: text encoder position embedding " + shape_string(position->sizes()) +
                " does not match token embedding " + shape_string(token->sizes()));
  if (config.hidden_size % kChannelsPerHead != 0)
    throw Error("checkpoint: text encoder width " + std::to_string(config.hidden_size) +
                " is not a multiple of 64, so its head count cannot be inferred; use a "
                "config.json");
  config.num_attention_heads = config.hidden_size / kChannelsPerHead;
  return config;
}

}  // namespace

CLIPTextConfig infer_clip_config(const TensorMap& all, ModelFamily family) {
  return infer_text_config(all, family, false);
}

CLIPTextConfig infer_clip2_config(const TensorMap& all) {
  return infer_text_config(all, ModelFamily::SDXL, true);
}

}  // namespace sdgen
