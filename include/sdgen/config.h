#pragma once

// Model and scheduler configurations. Field names mirror the diffusers /
// transformers `config.json` keys so that a config reads like its file.

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sdgen {

// diffusers UNet2DConditionModel (the SD1.x / SD2.x / SDXL subset).
struct UNetConfig {
  int in_channels = 4;
  int out_channels = 4;
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "CrossAttnDownBlock2D", "DownBlock2D"};
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";
  std::vector<int> block_out_channels = {320, 640, 1280, 1280};
  int layers_per_block = 2;
  int downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  std::string act_fn = "silu";
  int norm_num_groups = 32;
  double norm_eps = 1e-5;
  int cross_attention_dim = 768;
  // diffusers' historical naming: `attention_head_dim` is the number of heads
  // per block unless `num_attention_heads` is set (see UNet2DConditionModel).
  std::vector<int> attention_head_dim = {8, 8, 8, 8};
  std::vector<int> num_attention_heads;  // empty = null
  std::vector<int> transformer_layers_per_block = {1, 1, 1, 1};
  // Depths of the up blocks' transformers, in up-block order; empty = the
  // down blocks' depths reversed (diffusers' default).
  std::vector<int> reverse_transformer_layers_per_block;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  bool flip_sin_to_cos = true;
  int freq_shift = 0;
  int sample_size = 64;
  // SDXL's micro-conditioning: "" (none) or "text_time" (the pooled text
  // embedding and the size/crop ids, each id through a sinusoidal embedding
  // of addition_time_embed_dim features, into a TimestepEmbedding of
  // projection_class_embeddings_input_dim inputs added to the time embedding).
  std::string addition_embed_type;
  int addition_time_embed_dim = 0;
  int projection_class_embeddings_input_dim = 0;

  // Heads of down block i (diffusers: num_attention_heads or attention_head_dim).
  int heads(size_t block) const;
  static UNetConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// diffusers AutoencoderKL.
struct VAEConfig {
  int in_channels = 3;
  int out_channels = 3;
  int latent_channels = 4;
  std::vector<int> block_out_channels = {128, 256, 512, 512};
  int layers_per_block = 2;
  int norm_num_groups = 32;
  std::string act_fn = "silu";
  double scaling_factor = 0.18215;
  bool mid_block_add_attention = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  int sample_size = 512;
  // diffusers' default; the SDXL pipeline decodes an fp16 VAE that has it in
  // fp32 (the SDXL VAE overflows fp16).
  bool force_upcast = true;

  static VAEConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// transformers CLIPTextConfig.
struct CLIPTextConfig {
  int vocab_size = 49408;
  int hidden_size = 768;
  int intermediate_size = 3072;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";  // or "gelu" (SD2 / OpenCLIP)
  double layer_norm_eps = 1e-5;
  int bos_token_id = 49406;
  int eos_token_id = 49407;
  int pad_token_id = 49407;
  int projection_dim = 768;
  // CLIPTextModelWithProjection (SDXL's second encoder): a bias-free
  // text_projection [projection_dim, hidden] on the pooled output.
  bool with_projection = false;

  static CLIPTextConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// Tokenizer settings from tokenizer_config.json / special_tokens_map.json.
struct TokenizerConfig {
  std::string bos_token = "<|startoftext|>";
  std::string eos_token = "<|endoftext|>";
  std::string pad_token = "<|endoftext|>";  // SD2 uses "!"
  std::string unk_token = "<|endoftext|>";
  int model_max_length = 77;

  static TokenizerConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// The diffusers scheduler config shared by all schedulers (SchedulerMixin +
// ConfigMixin fields); each algorithm reads the fields it knows.
struct SchedulerConfig {
  std::string class_name = "DDIMScheduler";
  int num_train_timesteps = 1000;
  double beta_start = 0.00085;
  double beta_end = 0.012;
  std::string beta_schedule = "scaled_linear";  // linear | scaled_linear | squaredcos_cap_v2
  std::vector<double> trained_betas;
  std::string prediction_type = "epsilon";   // epsilon | v_prediction | sample
  std::string timestep_spacing = "leading";  // leading | trailing | linspace
  int steps_offset = 1;
  bool set_alpha_to_one = false;
  bool clip_sample = false;
  double clip_sample_range = 1.0;
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;
  bool rescale_betas_zero_snr = false;
  bool skip_prk_steps = true;
  std::string variance_type = "fixed_small";  // DDPM
  bool use_karras_sigmas = false;
  nlohmann::json raw;  // the whole file, for algorithm-specific keys

  static SchedulerConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// Reads and parses a JSON file; throws Error naming the file on failure.
nlohmann::json read_json_file(const std::string& path);

}  // namespace sdgen
