#include "sdgen/config.h"

#include <fstream>
#include <sstream>

#include "sdgen/error.h"

namespace sdgen {

using nlohmann::json;

namespace {

// Reads `key` into `out` when present and not null; a wrong type becomes an Error naming the key.
template <typename T>
void get(const json& j, const char* key, T& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  try {
    out = it->get<T>();
  } catch (const json::exception&) {
    throw Error(std::string("config key '") + key + "' has the wrong type (" + it->dump() + ")");
  }
}

// A field diffusers allows to be an int (same for every block) or a list.
void get_int_or_list(const json& j, const char* key, std::vector<int>& out, size_t blocks) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  if (it->is_number_integer()) {
    out.assign(blocks, it->get<int>());
  } else if (it->is_array()) {
    out.clear();
    for (const auto& v : *it) {
      if (!v.is_number_integer())
        throw Error(std::string("config key '") + key +
                    "' must hold integers (per-layer lists of lists are not supported)");
      out.push_back(v.get<int>());
    }
  } else {
    throw Error(std::string("config key '") + key + "' must be an integer or a list");
  }
}

}  // namespace

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open");
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return json::parse(buf.str());
  } catch (const json::exception& e) {
    throw Error(path + ": invalid JSON (" + e.what() + ")");
  }
}

int UNetConfig::heads(size_t block) const {
  const auto& v = num_attention_heads.empty() ? attention_head_dim : num_attention_heads;
  if (v.empty()) throw Error("UNet config has no attention head count");
  return block < v.size() ? v[block] : v.back();
}

UNetConfig UNetConfig::from_json(const json& j) {
  UNetConfig c;
  get(j, "in_channels", c.in_channels);
  get(j, "out_channels", c.out_channels);
  get(j, "down_block_types", c.down_block_types);
  get(j, "up_block_types", c.up_block_types);
  get(j, "mid_block_type", c.mid_block_type);
  get(j, "block_out_channels", c.block_out_channels);
  get(j, "layers_per_block", c.layers_per_block);
  get(j, "downsample_padding", c.downsample_padding);
  get(j, "mid_block_scale_factor", c.mid_block_scale_factor);
  get(j, "act_fn", c.act_fn);
  get(j, "norm_num_groups", c.norm_num_groups);
  get(j, "norm_eps", c.norm_eps);
  get(j, "cross_attention_dim", c.cross_attention_dim);
  const size_t blocks = c.block_out_channels.size();
  get_int_or_list(j, "attention_head_dim", c.attention_head_dim, blocks);
  c.num_attention_heads.clear();
  get_int_or_list(j, "num_attention_heads", c.num_attention_heads, blocks);
  c.transformer_layers_per_block.assign(blocks, 1);
  get_int_or_list(j, "transformer_layers_per_block", c.transformer_layers_per_block, blocks);
  get_int_or_list(j, "reverse_transformer_layers_per_block", c.reverse_transformer_layers_per_block,
                  blocks);
  get(j, "addition_embed_type", c.addition_embed_type);
  get(j, "addition_time_embed_dim", c.addition_time_embed_dim);
  get(j, "projection_class_embeddings_input_dim", c.projection_class_embeddings_input_dim);
  get(j, "use_linear_projection", c.use_linear_projection);
  get(j, "upcast_attention", c.upcast_attention);
  get(j, "flip_sin_to_cos", c.flip_sin_to_cos);
  get(j, "freq_shift", c.freq_shift);
  get(j, "sample_size", c.sample_size);
  if (c.block_out_channels.empty() || c.down_block_types.size() != blocks ||
      c.up_block_types.size() != blocks)
    throw Error(
        "UNet config: block_out_channels, down_block_types and up_block_types must have "
        "the same, non-zero length");
  if (c.attention_head_dim.size() == 1)
    c.attention_head_dim.assign(blocks, c.attention_head_dim[0]);
  return c;
}

json UNetConfig::to_json() const {
  json j = {{"_class_name", "UNet2DConditionModel"},
            {"in_channels", in_channels},
            {"out_channels", out_channels},
            {"down_block_types", down_block_types},
            {"up_block_types", up_block_types},
            {"mid_block_type", mid_block_type},
            {"block_out_channels", block_out_channels},
            {"layers_per_block", layers_per_block},
            {"downsample_padding", downsample_padding},
            {"mid_block_scale_factor", mid_block_scale_factor},
            {"act_fn", act_fn},
            {"norm_num_groups", norm_num_groups},
            {"norm_eps", norm_eps},
            {"cross_attention_dim", cross_attention_dim},
            {"attention_head_dim", attention_head_dim},
            {"transformer_layers_per_block", transformer_layers_per_block},
            {"use_linear_projection", use_linear_projection},
            {"upcast_attention", upcast_attention},
            {"flip_sin_to_cos", flip_sin_to_cos},
            {"freq_shift", freq_shift},
            {"sample_size", sample_size}};
  j["num_attention_heads"] =
      num_attention_heads.empty() ? json(nullptr) : json(num_attention_heads);
  j["reverse_transformer_layers_per_block"] = reverse_transformer_layers_per_block.empty()
                                                  ? json(nullptr)
                                                  : json(reverse_transformer_layers_per_block);
  j["addition_embed_type"] =
      addition_embed_type.empty() ? json(nullptr) : json(addition_embed_type);
  if (!addition_embed_type.empty()) {
    j["addition_time_embed_dim"] = addition_time_embed_dim;
    j["projection_class_embeddings_input_dim"] = projection_class_embeddings_input_dim;
  }
  return j;
}

VAEConfig VAEConfig::from_json(const json& j) {
  VAEConfig c;
  get(j, "in_channels", c.in_channels);
  get(j, "out_channels", c.out_channels);
  get(j, "latent_channels", c.latent_channels);
  get(j, "block_out_channels", c.block_out_channels);
  get(j, "layers_per_block", c.layers_per_block);
  get(j, "norm_num_groups", c.norm_num_groups);
  get(j, "act_fn", c.act_fn);
  get(j, "scaling_factor", c.scaling_factor);
  get(j, "mid_block_add_attention", c.mid_block_add_attention);
  get(j, "use_quant_conv", c.use_quant_conv);
  get(j, "use_post_quant_conv", c.use_post_quant_conv);
  get(j, "sample_size", c.sample_size);
  get(j, "force_upcast", c.force_upcast);
  if (c.block_out_channels.empty()) throw Error("VAE config: empty block_out_channels");
  return c;
}

json VAEConfig::to_json() const {
  std::vector<std::string> down(block_out_channels.size(), "DownEncoderBlock2D");
  std::vector<std::string> up(block_out_channels.size(), "UpDecoderBlock2D");
  return {{"_class_name", "AutoencoderKL"},
          {"in_channels", in_channels},
          {"out_channels", out_channels},
          {"latent_channels", latent_channels},
          {"block_out_channels", block_out_channels},
          {"down_block_types", down},
          {"up_block_types", up},
          {"layers_per_block", layers_per_block},
          {"norm_num_groups", norm_num_groups},
          {"act_fn", act_fn},
          {"scaling_factor", scaling_factor},
          {"mid_block_add_attention", mid_block_add_attention},
          {"use_quant_conv", use_quant_conv},
          {"use_post_quant_conv", use_post_quant_conv},
          {"force_upcast", force_upcast},
          {"sample_size", sample_size}};
}

CLIPTextConfig CLIPTextConfig::from_json(const json& j) {
  CLIPTextConfig c;
  get(j, "vocab_size", c.vocab_size);
  get(j, "hidden_size", c.hidden_size);
  get(j, "intermediate_size", c.intermediate_size);
  get(j, "num_hidden_layers", c.num_hidden_layers);
  get(j, "num_attention_heads", c.num_attention_heads);
  get(j, "max_position_embeddings", c.max_position_embeddings);
  get(j, "hidden_act", c.hidden_act);
  get(j, "layer_norm_eps", c.layer_norm_eps);
  get(j, "bos_token_id", c.bos_token_id);
  get(j, "eos_token_id", c.eos_token_id);
  get(j, "pad_token_id", c.pad_token_id);
  get(j, "projection_dim", c.projection_dim);
  if (auto it = j.find("architectures"); it != j.end() && it->is_array())
    for (const auto& a : *it)
      if (a.is_string() && a.get<std::string>() == "CLIPTextModelWithProjection")
        c.with_projection = true;
  if (c.hidden_act != "quick_gelu" && c.hidden_act != "gelu")
    throw Error("text encoder config: unsupported hidden_act '" + c.hidden_act +
                "' (quick_gelu or gelu)");
  if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0)
    throw Error("text encoder config: hidden_size must be a multiple of num_attention_heads");
  return c;
}

json CLIPTextConfig::to_json() const {
  return {{"architectures", {with_projection ? "CLIPTextModelWithProjection" : "CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"vocab_size", vocab_size},
          {"hidden_size", hidden_size},
          {"intermediate_size", intermediate_size},
          {"num_hidden_layers", num_hidden_layers},
          {"num_attention_heads", num_attention_heads},
          {"max_position_embeddings", max_position_embeddings},
          {"hidden_act", hidden_act},
          {"layer_norm_eps", layer_norm_eps},
          {"bos_token_id", bos_token_id},
          {"eos_token_id", eos_token_id},
          {"pad_token_id", pad_token_id},
          {"projection_dim", projection_dim}};
}

namespace {
// tokenizer_config.json stores special tokens as strings or as {"content": "..."} objects.
void get_token(const json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  if (it->is_string()) {
    out = it->get<std::string>();
  } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    out = (*it)["content"].get<std::string>();
  } else {
    throw Error(std::string("tokenizer config key '") + key + "' has the wrong type");
  }
}
}  // namespace

TokenizerConfig TokenizerConfig::from_json(const json& j) {
  TokenizerConfig c;
  get_token(j, "bos_token", c.bos_token);
  get_token(j, "eos_token", c.eos_token);
  get_token(j, "pad_token", c.pad_token);
  get_token(j, "unk_token", c.unk_token);
  auto it = j.find("model_max_length");
  // Some files store a huge sentinel (1e30) meaning "unset".
  if (it != j.end() && it->is_number() && it->get<double>() >= 1 && it->get<double>() <= 4096)
    c.model_max_length = static_cast<int>(it->get<double>());
  return c;
}

json TokenizerConfig::to_json() const {
  return {{"tokenizer_class", "CLIPTokenizer"},
          {"bos_token", bos_token},
          {"eos_token", eos_token},
          {"pad_token", pad_token},
          {"unk_token", unk_token},
          {"model_max_length", model_max_length}};
}

SchedulerConfig SchedulerConfig::from_json(const json& j) {
  SchedulerConfig c;
  c.raw = j;
  get(j, "_class_name", c.class_name);
  get(j, "num_train_timesteps", c.num_train_timesteps);
  get(j, "beta_start", c.beta_start);
  get(j, "beta_end", c.beta_end);
  get(j, "beta_schedule", c.beta_schedule);
  get(j, "trained_betas", c.trained_betas);
  get(j, "prediction_type", c.prediction_type);
  get(j, "timestep_spacing", c.timestep_spacing);
  get(j, "steps_offset", c.steps_offset);
  get(j, "set_alpha_to_one", c.set_alpha_to_one);
  get(j, "clip_sample", c.clip_sample);
  get(j, "clip_sample_range", c.clip_sample_range);
  get(j, "thresholding", c.thresholding);
  get(j, "dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  get(j, "sample_max_value", c.sample_max_value);
  get(j, "rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  get(j, "skip_prk_steps", c.skip_prk_steps);
  get(j, "variance_type", c.variance_type);
  get(j, "use_karras_sigmas", c.use_karras_sigmas);
  if (c.num_train_timesteps <= 0) throw Error("scheduler config: num_train_timesteps must be > 0");
  if (c.prediction_type != "epsilon" && c.prediction_type != "v_prediction" &&
      c.prediction_type != "sample")
    throw Error("scheduler config: unknown prediction_type '" + c.prediction_type + "'");
  return c;
}

json SchedulerConfig::to_json() const {
  json j = raw.is_object() ? raw : json::object();
  j["_class_name"] = class_name;
  j["num_train_timesteps"] = num_train_timesteps;
  j["beta_start"] = beta_start;
  j["beta_end"] = beta_end;
  j["beta_schedule"] = beta_schedule;
  j["trained_betas"] = trained_betas.empty() ? json(nullptr) : json(trained_betas);
  j["prediction_type"] = prediction_type;
  j["timestep_spacing"] = timestep_spacing;
  j["steps_offset"] = steps_offset;
  j["set_alpha_to_one"] = set_alpha_to_one;
  j["clip_sample"] = clip_sample;
  j["clip_sample_range"] = clip_sample_range;
  j["thresholding"] = thresholding;
  j["dynamic_thresholding_ratio"] = dynamic_thresholding_ratio;
  j["sample_max_value"] = sample_max_value;
  j["rescale_betas_zero_snr"] = rescale_betas_zero_snr;
  j["skip_prk_steps"] = skip_prk_steps;
  j["variance_type"] = variance_type;
  j["use_karras_sigmas"] = use_karras_sigmas;
  return j;
}

}  // namespace sdgen
