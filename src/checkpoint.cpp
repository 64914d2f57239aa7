// Single-file (LDM layout) checkpoints: architecture detection and conversion
// to diffusers names. The renaming rules follow diffusers'
// loaders/single_file_utils.py (convert_ldm_unet_checkpoint,
// convert_ldm_vae_checkpoint, convert_open_clip_checkpoint,
// create_unet_diffusers_config), re-derived here as name rewriting on one key at
// a time so that nothing is copied and unknown keys survive.

#include "sdgen/checkpoint.h"

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <utility>
#include <vector>

#include "sdgen/error.h"

namespace sdgen {
namespace {

const std::string kUNet = kLDMUNetPrefix;
const std::string kVAE = kLDMVAEPrefix;
const std::string kCLIP = kLDMCLIPPrefix;
const std::string kOpenCLIP = kOpenCLIPPrefix;

// OpenCLIP ViT-H/14 (SD2's text tower) has 24 layers; SD2 conditions on the
// penultimate one, so diffusers' SD2 text encoder keeps 23.
constexpr int kOpenCLIPTowerLayers = 24;
// Both CLIP ViT-L/14 (SD1) and OpenCLIP ViT-H/14 (SD2) use 64 channels per head,
// and so do SD2's UNet attentions (create_unet_diffusers_config: num_head_channels 64).
constexpr int kChannelsPerHead = 64;
constexpr int kSD1UNetHeads = 8;  // SD1.x v1-inference.yaml: num_heads 8

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// If `s` starts with `prefix`, stores what follows in *rest.
bool take(const std::string& s, const std::string& prefix, std::string* rest) {
  if (!starts_with(s, prefix)) return false;
  *rest = s.substr(prefix.size());
  return true;
}

// Parses "<digits>." at the front of `s`.
bool take_index(const std::string& s, int* index, std::string* rest) {
  size_t n = 0;
  while (n < s.size() && std::isdigit(static_cast<unsigned char>(s[n]))) ++n;
  if (n == 0 || n > 6 || n >= s.size() || s[n] != '.') return false;
  *index = std::stoi(s.substr(0, n));
  *rest = s.substr(n + 1);
  return true;
}

// "<prefix><int>.<rest>"
bool take_indexed(const std::string& s, const std::string& prefix, int* index, std::string* rest) {
  std::string tail;
  return take(s, prefix, &tail) && take_index(tail, index, rest);
}

// The entries of a sorted map whose keys start with `prefix`.
struct PrefixRange {
  TensorMap::const_iterator first, last;
  TensorMap::const_iterator begin() const { return first; }
  TensorMap::const_iterator end() const { return last; }
  bool empty() const { return first == last; }
};

PrefixRange with_prefix(const TensorMap& all, const std::string& prefix) {
  auto first = all.lower_bound(prefix);
  auto last = first;
  while (last != all.end() && starts_with(last->first, prefix)) ++last;
  return {first, last};
}

bool has_prefix(const TensorMap& all, const std::string& prefix) {
  auto it = all.lower_bound(prefix);
  return it != all.end() && starts_with(it->first, prefix);
}

// 1 + the largest N over keys "<prefix>N.…" (0 when there are none).
int count_indexed(const TensorMap& all, const std::string& prefix) {
  int count = 0;
  for (const auto& kv : with_prefix(all, prefix)) {
    int index = 0;
    std::string rest;
    if (take_index(kv.first.substr(prefix.size()), &index, &rest))
      count = std::max(count, index + 1);
  }
  return count;
}

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

bool any_key_contains(const TensorMap& all, std::initializer_list<const char*> parts) {
  for (const auto& kv : all)
    for (const char* part : parts)
      if (kv.first.find(part) != std::string::npos) return true;
  return false;
}

// What a file without model.diffusion_model.* holds, for the error message.
std::string describe_non_checkpoint(const TensorMap& all) {
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

const char* family_name(ModelFamily family) { return family == ModelFamily::SD1 ? "SD1" : "SD2"; }

// ---- detection ---------------------------------------------------------------

ModelFamily detect_family(const TensorMap& all) {
  const std::string not_sd = "checkpoint is not a Stable Diffusion 1.x/2.x single file: ";
  if (all.empty()) throw Error(not_sd + "it holds no tensors");
  if (has_prefix(all, "conditioner.embedders.") || has_prefix(all, kUNet + "label_emb."))
    throw Error(not_sd +
                "it looks like SDXL (conditioner.embedders.* / model.diffusion_model.label_emb.*), "
                "which is not supported");
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
  for (int channels : config.block_out_channels) {
    const int divisor = family == ModelFamily::SD1 ? kSD1UNetHeads : kChannelsPerHead;
    if (channels % divisor != 0)
      throw Error("checkpoint: UNet block width " + std::to_string(channels) +
                  " is not a multiple of " + std::to_string(divisor) + ", so the " +
                  family_name(family) + " head count does not apply; use a config.json");
    config.attention_head_dim.push_back(family == ModelFamily::SD1 ? kSD1UNetHeads
                                                                   : channels / kChannelsPerHead);
  }
  if (family == ModelFamily::SD2) {
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
VAEConfig infer_vae_config(const TensorMap& all) {
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
  return config;
}

CLIPTextConfig infer_clip_config(const TensorMap& all, ModelFamily family) {
  const char* purpose = "infer the text encoder config";
  CLIPTextConfig config;
  const torch::Tensor* token = nullptr;
  const torch::Tensor* position = nullptr;
  const torch::Tensor* fc1 = nullptr;
  int layers = 0;
  if (family == ModelFamily::SD1) {
    // transformers' CLIPTextModel under cond_stage_model.transformer (older
    // files lack the "text_model." level).
    const std::string p = has_prefix(all, kCLIP + "text_model.") ? kCLIP + "text_model." : kCLIP;
    token = &require_dim(all, p + "embeddings.token_embedding.weight", 2, purpose);
    position = &require_dim(all, p + "embeddings.position_embedding.weight", 2, purpose);
    fc1 = &require_dim(all, p + "encoder.layers.0.mlp.fc1.weight", 2, purpose);
    layers = count_indexed(all, p + "encoder.layers.");
    config.hidden_act = "quick_gelu";
  } else {
    // OpenCLIP TextTransformer under cond_stage_model.model (FrozenOpenCLIPEmbedder).
    token = &require_dim(all, kOpenCLIP + "token_embedding.weight", 2, purpose);
    position = &require_dim(all, kOpenCLIP + "positional_embedding", 2, purpose);
    fc1 = &require_dim(all, kOpenCLIP + "transformer.resblocks.0.mlp.c_fc.weight", 2, purpose);
    const int tower = count_indexed(all, kOpenCLIP + "transformer.resblocks.");
    layers = tower == kOpenCLIPTowerLayers ? tower - 1 : tower;
    config.hidden_act = "gelu";
    // SD2's tokenizer pads with "!" (id 0); bos/eos are CLIP's.
    config.pad_token_id = 0;
  }
  config.vocab_size = static_cast<int>(token->size(0));
  config.hidden_size = static_cast<int>(token->size(1));
  config.max_position_embeddings = static_cast<int>(position->size(0));
  config.intermediate_size = static_cast<int>(fc1->size(0));
  config.num_hidden_layers = layers;
  config.projection_dim = config.hidden_size;
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

TensorMap convert_hf_clip(const TensorMap& all, const CLIPTextConfig& config) {
  const PrefixRange range = with_prefix(all, kCLIP);
  if (range.empty()) throw Error("checkpoint: no SD1 text encoder tensors (" + kCLIP + "*)");
  TensorMap out;
  for (const auto& kv : range) {
    std::string name = kv.first.substr(kCLIP.size()), rest;
    if (take(name, "text_model.", &rest)) name = rest;  // older files lack this level
    if (ends_with(name, "position_ids")) continue;      // a buffer, not a weight
    int layer = 0;
    if (take_indexed(name, "encoder.layers.", &layer, &rest) && layer >= config.num_hidden_layers)
      continue;
    insert_unique(out, name, kv.second, kv.first);
  }
  return out;
}

// convert_open_clip_checkpoint.
TensorMap convert_open_clip(const TensorMap& all, const CLIPTextConfig& config) {
  const PrefixRange range = with_prefix(all, kOpenCLIP);
  if (range.empty()) throw Error("checkpoint: no SD2 text encoder tensors (" + kOpenCLIP + "*)");
  TensorMap out;
  for (const auto& kv : range) {
    const std::string& key = kv.first;
    const std::string name = key.substr(kOpenCLIP.size());
    std::string rest;
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
  return family == ModelFamily::SD1 ? convert_hf_clip(all, config) : convert_open_clip(all, config);
}

ConvertedWeights convert_single_file(const TensorMap& all, ModelFamily family,
                                     const UNetConfig& unet_config, const VAEConfig& vae_config,
                                     const CLIPTextConfig& clip_config) {
  ConvertedWeights out;
  out.unet = convert_ldm_unet(all, unet_config);
  out.vae = convert_ldm_vae(all, vae_config);
  out.text_encoder = convert_ldm_text_encoder(all, family, clip_config);
  return out;
}

}  // namespace sdgen
