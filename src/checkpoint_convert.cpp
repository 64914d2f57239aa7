// Single-file (LDM layout) checkpoints: conversion to diffusers names. The
// renaming rules follow diffusers' loaders/single_file_utils.py
// (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
// convert_open_clip_checkpoint), re-derived here as name rewriting on one key
// at a time so that nothing is copied and unknown keys survive. Architecture
// detection and config inference are in checkpoint.cpp.

#include <utility>
#include <vector>

#include "checkpoint_keys.h"
#include "sdgen/checkpoint.h"
#include "sdgen/error.h"

namespace sdgen {
namespace {

using namespace ldm_keys;

void insert_unique(TensorMap& out, const std::string& name, const torch::Tensor& tensor,
                   const std::string& source) {
  if (!out.emplace(name, tensor).second)
    throw Error("checkpoint: two tensors convert to '" + name + "' (the second is '" + source +
                "')");
}

// [C_out, C_in, 1, 1] conv weight <-> [C_out, C_in] linear weight, as a view.
torch::Tensor to_linear_weight(const torch::Tensor& t, const std::string& key) {
  if (t.dim() == 2) return t;
  if (t.dim() != 4 || t.size(2) != 1 || t.size(3) != 1)
    throw Error("checkpoint: tensor '" + key + "' has shape " + shape_string(t.sizes()) +
                ", expected a 1x1 convolution [C_out, C_in, 1, 1] or a linear weight");
  return t.reshape({t.size(0), t.size(1)});
}

torch::Tensor to_conv1x1_weight(const torch::Tensor& t, const std::string& key) {
  if (t.dim() == 4) return t;
  if (t.dim() != 2)
    throw Error("checkpoint: tensor '" + key + "' has shape " + shape_string(t.sizes()) +
                ", expected a linear [C_out, C_in] or 1x1 convolution weight");
  return t.reshape({t.size(0), t.size(1), 1, 1});
}

}  // namespace

// ---- UNet ---------------------------------------------------------------------

namespace {

// ResBlock (LDM openaimodel.py) -> ResnetBlock2D: renew_resnet_paths. Returns
// "" for a name it does not know.
std::string unet_resnet_name(const std::string& rest) {
  static const std::pair<const char*, const char*> kMap[] = {
      {"in_layers.0.", "norm1."},          {"in_layers.2.", "conv1."},
      {"out_layers.0.", "norm2."},         {"out_layers.3.", "conv2."},
      {"emb_layers.1.", "time_emb_proj."}, {"skip_connection.", "conv_shortcut."}};
  std::string tail;
  for (const auto& m : kMap)
    if (take(rest, m.first, &tail)) return m.second + tail;
  return "";
}

// One LDM UNet name (prefix removed) -> diffusers name, "" when unknown.
// Block i of input_blocks (i >= 1) is layer (i-1) % (L+1) of down block
// (i-1) / (L+1), the last layer of a block being its downsampler; output block
// i is layer i % (L+1) of up block i / (L+1) (convert_ldm_unet_checkpoint).
std::string unet_name(const std::string& name, int per_block) {
  static const std::pair<const char*, const char*> kFixed[] = {
      {"time_embed.0.", "time_embedding.linear_1."},
      {"time_embed.2.", "time_embedding.linear_2."},
      {"label_emb.0.0.", "add_embedding.linear_1."},  // SDXL
      {"label_emb.0.2.", "add_embedding.linear_2."},
      {"input_blocks.0.0.", "conv_in."},
      {"out.0.", "conv_norm_out."},
      {"out.2.", "conv_out."}};
  std::string rest, sub;
  for (const auto& m : kFixed)
    if (take(name, m.first, &rest)) return m.second + rest;

  int i = 0, k = 0;
  if (take_indexed(name, "input_blocks.", &i, &rest) && i >= 1 && take_index(rest, &k, &sub)) {
    const std::string block = std::to_string((i - 1) / per_block);
    const std::string layer = std::to_string((i - 1) % per_block);
    std::string tail;
    if (k == 0 && take(sub, "op.", &tail))
      return "down_blocks." + block + ".downsamplers.0.conv." + tail;
    if (k == 0) {
      const std::string resnet = unet_resnet_name(sub);
      return resnet.empty() ? "" : "down_blocks." + block + ".resnets." + layer + "." + resnet;
    }
    if (k == 1) return "down_blocks." + block + ".attentions." + layer + "." + sub;
    return "";
  }
  if (take_indexed(name, "middle_block.", &k, &sub)) {
    if (k == 1) return "mid_block.attentions.0." + sub;
    if (k == 0 || k == 2) {
      const std::string resnet = unet_resnet_name(sub);
      return resnet.empty() ? "" : "mid_block.resnets." + std::to_string(k / 2) + "." + resnet;
    }
    return "";
  }
  if (take_indexed(name, "output_blocks.", &i, &rest) && take_index(rest, &k, &sub)) {
    const std::string block = std::to_string(i / per_block);
    const std::string layer = std::to_string(i % per_block);
    std::string tail;
    if (k == 0) {
      const std::string resnet = unet_resnet_name(sub);
      return resnet.empty() ? "" : "up_blocks." + block + ".resnets." + layer + "." + resnet;
    }
    // The upsampler is output_blocks.i.1 (no attention) or .2 (after one).
    if ((k == 1 || k == 2) && take(sub, "conv.", &tail))
      return "up_blocks." + block + ".upsamplers.0.conv." + tail;
    if (k == 1) return "up_blocks." + block + ".attentions." + layer + "." + sub;
    return "";
  }
  return "";
}

}  // namespace

std::string ldm_unet_name_to_diffusers(const std::string& name, const UNetConfig& config) {
  return unet_name(name, config.layers_per_block + 1);
}

TensorMap convert_ldm_unet(const TensorMap& all, const UNetConfig& config) {
  const PrefixRange range = with_prefix(all, kUNet);
  if (range.empty()) throw Error("checkpoint: no UNet tensors (" + kUNet + "*)");
  const int per_block = config.layers_per_block + 1;
  TensorMap out;
  for (const auto& kv : range) {
    const std::string& key = kv.first;
    std::string name = unet_name(key.substr(kUNet.size()), per_block);
    torch::Tensor tensor = kv.second;
    if (name.empty()) {
      name = key;  // unknown: reported as unexpected by load_weights
    } else if (starts_with(name, "down_blocks.") || starts_with(name, "up_blocks.") ||
               starts_with(name, "mid_block.")) {
      // Transformer2DModel proj_in/proj_out: 1x1 conv (SD1) or linear (SD2).
      if (name.find(".attentions.") != std::string::npos &&
          (ends_with(name, ".proj_in.weight") || ends_with(name, ".proj_out.weight")) &&
          name.find(".transformer_blocks.") == std::string::npos)
        tensor = config.use_linear_projection ? to_linear_weight(tensor, key)
                                              : to_conv1x1_weight(tensor, key);
    }
    insert_unique(out, name, tensor, key);
  }
  return out;
}

// ---- VAE ----------------------------------------------------------------------

namespace {

// renew_vae_resnet_paths: only nin_shortcut is renamed.
std::string vae_resnet_name(const std::string& rest) {
  std::string tail;
  if (take(rest, "nin_shortcut.", &tail)) return "conv_shortcut." + tail;
  return rest;
}

// renew_vae_attention_paths.
std::string vae_attention_name(const std::string& rest) {
  static const std::pair<const char*, const char*> kMap[] = {{"norm.", "group_norm."},
                                                             {"q.", "to_q."},
                                                             {"k.", "to_k."},
                                                             {"v.", "to_v."},
                                                             {"proj_out.", "to_out.0."}};
  std::string tail;
  for (const auto& m : kMap)
    if (take(rest, m.first, &tail)) return m.second + tail;
  return "";
}

// Encoder or decoder name below "encoder."/"decoder." -> diffusers, "" if unknown.
// The LDM decoder counts up.N from the lowest resolution's opposite end:
// up.N is diffusers' up_blocks[num_blocks - 1 - N].
std::string vae_coder_name(const std::string& rest, bool decoder, int num_blocks) {
  std::string sub, tail;
  int i = 0, j = 0;
  if (take(rest, "conv_in.", &tail)) return "conv_in." + tail;
  if (take(rest, "conv_out.", &tail)) return "conv_out." + tail;
  if (take(rest, "norm_out.", &tail)) return "conv_norm_out." + tail;
  if (take(rest, "mid.block_1.", &tail)) return "mid_block.resnets.0." + vae_resnet_name(tail);
  if (take(rest, "mid.block_2.", &tail)) return "mid_block.resnets.1." + vae_resnet_name(tail);
  if (take(rest, "mid.attn_1.", &tail)) {
    const std::string attention = vae_attention_name(tail);
    return attention.empty() ? "" : "mid_block.attentions.0." + attention;
  }
  const char* level = decoder ? "up." : "down.";
  if (!take_indexed(rest, level, &i, &sub) || i >= num_blocks) return "";
  const std::string block = decoder ? "up_blocks." + std::to_string(num_blocks - 1 - i)
                                    : "down_blocks." + std::to_string(i);
  if (take_indexed(sub, "block.", &j, &tail))
    return block + ".resnets." + std::to_string(j) + "." + vae_resnet_name(tail);
  if (take(sub, decoder ? "upsample.conv." : "downsample.conv.", &tail))
    return block + (decoder ? ".upsamplers.0.conv." : ".downsamplers.0.conv.") + tail;
  return "";
}

}  // namespace

TensorMap convert_ldm_vae(const TensorMap& all, const VAEConfig& config) {
  const PrefixRange range = with_prefix(all, kVAE);
  if (range.empty()) throw Error("checkpoint: no VAE tensors (" + kVAE + "*)");
  const int num_blocks = static_cast<int>(config.block_out_channels.size());
  TensorMap out;
  for (const auto& kv : range) {
    const std::string& key = kv.first;
    const std::string name = key.substr(kVAE.size());
    if (starts_with(name, "loss.")) continue;  // training-only (LPIPS, discriminator, logvar)
    std::string rest, converted;
    if (starts_with(name, "quant_conv.") || starts_with(name, "post_quant_conv.")) {
      converted = name;
    } else {
      for (const bool decoder : {false, true}) {
        const std::string part = decoder ? "decoder." : "encoder.";
        if (!take(name, part, &rest)) continue;
        const std::string inner = vae_coder_name(rest, decoder, num_blocks);
        if (!inner.empty()) converted = part + inner;
      }
    }
    torch::Tensor tensor = kv.second;
    if (converted.empty()) {
      converted = key;  // unknown: reported as unexpected by load_weights
    } else if (converted.find(".mid_block.attentions.0.to_") != std::string::npos &&
               ends_with(converted, ".weight")) {
      // The LDM AttnBlock uses 1x1 convs, diffusers' Attention linear layers
      // (conv_attn_to_linear).
      tensor = to_linear_weight(tensor, key);
    }
    insert_unique(out, converted, tensor, key);
  }
  return out;
}

// ---- text encoder ---------------------------------------------------------------

namespace {

// OpenCLIP ResidualAttentionBlock -> CLIPEncoderLayer, below
// "transformer.resblocks.N." (textenc_transformer_conversion_lst).
std::string open_clip_layer_name(const std::string& rest) {
  static const std::pair<const char*, const char*> kMap[] = {
      {"ln_1.", "layer_norm1."},
      {"ln_2.", "layer_norm2."},
      {"mlp.c_fc.", "mlp.fc1."},
      {"mlp.c_proj.", "mlp.fc2."},
      {"attn.out_proj.", "self_attn.out_proj."}};
  std::string tail;
  for (const auto& m : kMap)
    if (take(rest, m.first, &tail)) return m.second + tail;
  return "";
}

TensorMap convert_hf_clip(const TensorMap& all, const CLIPTextConfig& config,
                          const std::string& prefix) {
  const PrefixRange range = with_prefix(all, prefix);
  if (range.empty()) throw Error("checkpoint: no CLIP text encoder tensors (" + prefix + "*)");
  TensorMap out;
  for (const auto& kv : range) {
    std::string name = kv.first.substr(prefix.size()), rest;
    if (take(name, "text_model.", &rest)) name = rest;  // older files lack this level
    if (ends_with(name, "position_ids")) continue;      // a buffer, not a weight
    int layer = 0;
    if (take_indexed(name, "encoder.layers.", &layer, &rest) && layer >= config.num_hidden_layers)
      continue;
    insert_unique(out, name, kv.second, kv.first);
  }
  return out;
}

// convert_open_clip_checkpoint. With config.with_projection (SDXL) the
// text_projection is kept, transposed: OpenCLIP computes pooled @ P with P
// [hidden, proj], a Linear weight is [proj, hidden].
TensorMap convert_open_clip(const TensorMap& all, const CLIPTextConfig& config,
                            const std::string& prefix) {
  const PrefixRange range = with_prefix(all, prefix);
  if (range.empty()) throw Error("checkpoint: no OpenCLIP text encoder tensors (" + prefix + "*)");
  TensorMap out;
  for (const auto& kv : range) {
    const std::string& key = kv.first;
    const std::string name = key.substr(prefix.size());
    std::string rest;
    if (name == "text_projection" && config.with_projection) {
      const torch::Tensor& p = kv.second;
      if (p.dim() != 2)
        throw Error("checkpoint: tensor '" + key + "' has shape " + shape_string(p.sizes()) +
                    ", expected [hidden, projection]");
      insert_unique(out, "text_projection.weight", p.t(), key);
      continue;
    }
    if (name == "text_projection" || name == "logit_scale" || ends_with(name, "position_ids"))
      continue;  // image-text projection and contrastive temperature: unused for conditioning
    if (name == "token_embedding.weight") {
      insert_unique(out, "embeddings.token_embedding.weight", kv.second, key);
    } else if (name == "positional_embedding") {
      insert_unique(out, "embeddings.position_embedding.weight", kv.second, key);
    } else if (take(name, "ln_final.", &rest)) {
      insert_unique(out, "final_layer_norm." + rest, kv.second, key);
    } else if (int layer = 0; take_indexed(name, "transformer.resblocks.", &layer, &rest)) {
      if (layer >= config.num_hidden_layers) continue;  // SD2's unused last layer
      const std::string base = "encoder.layers." + std::to_string(layer) + ".";
      if (rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias") {
        // nn.MultiheadAttention packs [q; k; v] along dim 0.
        const torch::Tensor& packed = kv.second;
        if (packed.dim() < 1 || packed.size(0) != 3 * config.hidden_size)
          throw Error("checkpoint: tensor '" + key + "' has shape " + shape_string(packed.sizes()) +
                      ", expected first dimension 3 x " + std::to_string(config.hidden_size));
        const auto parts = packed.chunk(3, 0);
        const std::string what = rest == "attn.in_proj_weight" ? ".weight" : ".bias";
        insert_unique(out, base + "self_attn.q_proj" + what, parts[0], key);
        insert_unique(out, base + "self_attn.k_proj" + what, parts[1], key);
        insert_unique(out, base + "self_attn.v_proj" + what, parts[2], key);
      } else {
        const std::string converted = open_clip_layer_name(rest);
        insert_unique(out, converted.empty() ? key : base + converted, kv.second, key);
      }
    } else {
      insert_unique(out, key, kv.second, key);  // unknown: reported by load_weights
    }
  }
  return out;
}

}  // namespace

TensorMap convert_ldm_text_encoder(const TensorMap& all, ModelFamily family,
                                   const CLIPTextConfig& config) {
  switch (family) {
    case ModelFamily::SD1:
      return convert_hf_clip(all, config, kCLIP);
    case ModelFamily::SD2:
      return convert_open_clip(all, config, kOpenCLIP);
    case ModelFamily::SDXL:
      break;
  }
  return convert_hf_clip(all, config, kSDXLCLIPPrefix);
}

TensorMap convert_ldm_text_encoder_2(const TensorMap& all, const CLIPTextConfig& config) {
  return convert_open_clip(all, config, kSDXLOpenCLIPPrefix);
}

ConvertedWeights convert_single_file(const TensorMap& all, ModelFamily family,
                                     const UNetConfig& unet_config, const VAEConfig& vae_config,
                                     const CLIPTextConfig& clip_config,
                                     const CLIPTextConfig& clip2_config) {
  ConvertedWeights out;
  out.unet = convert_ldm_unet(all, unet_config);
  out.vae = convert_ldm_vae(all, vae_config);
  out.text_encoder = convert_ldm_text_encoder(all, family, clip_config);
  if (family == ModelFamily::SDXL)
    out.text_encoder_2 = convert_ldm_text_encoder_2(all, clip2_config);
  return out;
}

}  // namespace sdgen
