#include "sdgen/model.h"

#include <filesystem>
#include <iostream>

#include "sdgen/checkpoint.h"
#include "sdgen/error.h"
#include "sdgen/layers.h"
#include "sdgen/safetensors.h"
#include "sdgen/torch_checkpoint.h"
#include "sdgen/weights.h"
#include "vae_file.h"

namespace fs = std::filesystem;

namespace sdgen {

namespace {

// The weights file of one diffusers component folder (ComponentFiles::weights),
// or Error naming the folder when it is missing.
const std::string& require_weights(const ComponentFiles& files) {
  const fs::path file(files.weights);
  if (fs::exists(file)) return files.weights;
  const fs::path dir = file.parent_path();
  for (const auto& n : {"diffusion_pytorch_model.bin", "pytorch_model.bin"})
    if (fs::exists(dir / n)) throw Error(pickle_refusal((dir / n).string(), "checkpoints"));
  throw Error(dir.string() + ": no weights found (looked for " + file.filename().string() + ")");
}

nlohmann::json component_config(const ComponentFiles& files, const std::string& what) {
  if (!fs::exists(files.config)) throw Error(files.config + ": missing " + what + " config");
  return read_json_file(files.config);
}

// Text-encoder files store keys with or without transformers' "text_model." prefix.
TensorMap text_encoder_tensors(const TensorMap& all) {
  bool prefixed = false;
  for (const auto& kv : all)
    if (kv.first.rfind("text_model.", 0) == 0) prefixed = true;
  TensorMap out;
  for (const auto& [key, t] : all) {
    std::string k = key;
    if (prefixed) {
      if (k.rfind("text_model.", 0) != 0) {
        out.emplace(k, t);  // e.g. text_projection: reported as unexpected unless known
        continue;
      }
      k = k.substr(11);
    }
    if (k == "embeddings.position_ids") continue;  // a buffer older transformers saved
    out.emplace(k, t);
  }
  return out;
}

// LoadOptions::weights_as_stored where it applies (the CPU).
bool weights_kept_as_stored(const LoadOptions& options) {
  return options.weights_as_stored && options.device.is_cpu();
}

// channels_last (NHWC) convolutions: the default per device and dtype comes
// from measurements (docs/performance.md).
bool resolve_channels_last(const LoadOptions& options) {
  if (weights_kept_as_stored(options)) return false;  // the weights keep the file's layout
  if (options.channels_last >= 0) return options.channels_last > 0;
  // Measured: +18% UNet it/s on an H200 (fp16); on the CPU (libtorch 1.13,
  // oneDNN) bf16 UNet steps ran faster in channels_last, fp32 ones did not
  // (docs/performance.md).
  return options.device.is_cuda() || options.dtype == torch::kBFloat16;
}

template <typename ModuleHolder>
void place_and_load(ModuleHolder& module, const TensorMap& weights, const std::string& what,
                    const LoadOptions& options, std::optional<torch::ScalarType> dtype = {},
                    std::function<std::string(const torch::Tensor&)> file_key = {}) {
  load_weights(*module, weights, what,
               {options.device, dtype.value_or(options.dtype), resolve_channels_last(options),
                std::move(file_key), weights_kept_as_stored(options)});
  module->eval();
}

// Keeps the mapped file tensors a CPU model's `component` was loaded from
// (StableDiffusionModel::weight_sources).
void keep_sources(StableDiffusionModel& model, const std::string& component,
                  const TensorMap& weights) {
  if (!model.device.is_cpu()) return;
  auto& kept = model.weight_sources[component];
  for (const auto& [name, tensor] : weights)
    if (is_file_mapped(tensor)) kept.emplace(name, tensor);
}

TokenizerConfig tokenizer_config_in(const fs::path& dir, TokenizerConfig fallback) {
  const fs::path p = dir / "tokenizer_config.json";
  if (fs::exists(p)) return TokenizerConfig::from_json(read_json_file(p.string()));
  return fallback;
}

// Where the tokenizer resolve_model_files chose (ModelFiles::tokenizer) is,
// and its settings (the folder's tokenizer_config.json, else `fallback`).
std::pair<std::string, TokenizerConfig> tokenizer_source(const ModelFiles& files,
                                                         const TokenizerConfig& fallback) {
  if (files.tokenizer_given) {
    const fs::path p(files.tokenizer);
    if (!fs::exists(p)) throw Error(files.tokenizer + ": tokenizer path not found");
    const fs::path dir = fs::is_directory(p) ? p : p.parent_path();
    return {files.tokenizer, tokenizer_config_in(dir, fallback)};
  }
  if (!files.tokenizer.empty())
    return {files.tokenizer, tokenizer_config_in(files.tokenizer, fallback)};
  std::string where;
  for (const auto& l : files.tokenizer_candidates) where += (where.empty() ? "" : ", ") + l;
  throw Error(
      "no CLIP tokenizer files (vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz) "
      "nor a SentencePiece model (spiece.model or tokenizer.model) found; looked in: " +
      where +
      ". Pass --tokenizer DIR (e.g. the 'tokenizer' folder of a diffusers model) or set "
      "SDGEN_TOKENIZER");
}

std::unique_ptr<Tokenizer> load_tokenizer(const ModelFiles& files,
                                          const TokenizerConfig& fallback) {
  const auto [path, config] = tokenizer_source(files, fallback);
  return tokenizer_from_path(path, config);
}

// SDXL's tokenizer_2: its own folder when the model has one, else the first
// tokenizer's vocabulary padded with "!" (id 0), as SDXL's tokenizer_2 is.
std::unique_ptr<Tokenizer> load_tokenizer_2(const ModelFiles& files) {
  TokenizerConfig fallback;
  fallback.pad_token = "!";
  if (!files.tokenizer_2.empty())
    return tokenizer_from_path(files.tokenizer_2, tokenizer_config_in(files.tokenizer_2, fallback));
  auto [path, config] = tokenizer_source(files, fallback);
  config.pad_token = "!";
  return tokenizer_from_path(path, config);
}

// The text encoder takes rows of the tokenizer's length, and embeds its ids: a
// mismatch is an error here rather than at the first prompt (on CUDA an id
// outside the embedding is a device-side assert).
void check_tokenizer_fits(const Tokenizer& tokenizer, const CLIPTextConfig& config) {
  if (tokenizer.max_length() > config.max_position_embeddings)
    throw Error("tokenizer model_max_length " + std::to_string(tokenizer.max_length()) +
                " exceeds the text encoder's max_position_embeddings " +
                std::to_string(config.max_position_embeddings));
  if (const auto* sp = dynamic_cast<const SentencePieceTokenizer*>(&tokenizer)) {
    if (sp->vocab_size() > static_cast<size_t>(config.vocab_size))
      throw Error("SentencePiece tokenizer has " + std::to_string(sp->vocab_size()) +
                  " pieces but the text encoder's vocab_size is " +
                  std::to_string(config.vocab_size));
  }
}

void apply_prediction_override(SchedulerConfig& config, const std::string& prediction) {
  if (prediction.empty()) return;
  if (prediction == "epsilon" || prediction == "eps") {
    config.prediction_type = "epsilon";
  } else if (prediction == "v" || prediction == "v_prediction" || prediction == "v-prediction") {
    config.prediction_type = "v_prediction";
  } else {
    throw Error("unknown prediction type '" + prediction + "' (use epsilon or v)");
  }
}

// The scheduler config the SD1.x/SD2.x releases ship (DDIM/PNDM, scaled_linear
// 0.00085-0.012, leading spacing, steps_offset 1), used for single files.
SchedulerConfig default_scheduler_config() {
  SchedulerConfig c;
  c.class_name = "PNDMScheduler";
  c.raw = c.to_json();
  return c;
}

// stable-diffusion-xl-base-1.0's scheduler config: Euler discrete over the
// same betas, leading spacing, steps_offset 1.
SchedulerConfig sdxl_scheduler_config() {
  SchedulerConfig c;
  c.class_name = "EulerDiscreteScheduler";
  c.raw = c.to_json();
  c.raw["interpolation_type"] = "linear";
  return c;
}

// The scheduler config of the config folder, else the built-in one.
SchedulerConfig scheduler_config_of(const ModelFiles& files, bool sdxl = false) {
  if (!files.scheduler_config.empty())
    return SchedulerConfig::from_json(read_json_file(files.scheduler_config));
  return sdxl ? sdxl_scheduler_config() : default_scheduler_config();
}

// The VAE's dtype: --vae-dtype / LoadOptions::vae_dtype when given, else the
// model's; an SDXL VAE whose config says force_upcast decodes in fp32 when
// the model runs in fp16 (diffusers' StableDiffusionXLPipeline upcasts it
// too: the SDXL VAE overflows fp16 on nearly every image, so trying fp16
// first would only add a wasted decode).
torch::ScalarType vae_dtype_for(const LoadOptions& options, const VAEConfig& config, bool sdxl) {
  if (options.vae_dtype) return *options.vae_dtype;
  if (sdxl && config.force_upcast && options.dtype == torch::kHalf) return torch::kFloat32;
  return options.dtype;
}

// The second text encoder of an SDXL model; a model without one is an error
// naming what is missing.
void load_text_encoder_2(StableDiffusionModel& model, const CLIPTextConfig& config,
                         const TensorMap& weights, const std::string& what,
                         const LoadOptions& options,
                         std::function<std::string(const torch::Tensor&)> file_key = {}) {
  if (!config.with_projection)
    throw Error(what +
                ": SDXL's second text encoder must be a CLIPTextModelWithProjection "
                "(its config.json \"architectures\")");
  model.text_encoder_2 = CLIPTextModel(config);
  place_and_load(model.text_encoder_2, weights, what, options, {}, std::move(file_key));
}

// Both tokenizers fit their encoders, and SDXL's UNet takes what they give:
// the two hidden widths side by side.
void check_sdxl_widths(const StableDiffusionModel& model, const std::string& where) {
  const auto& c1 = model.text_encoder->config();
  const auto& c2 = model.text_encoder_2->config();
  const auto& u = model.unet->config();
  if (c1.hidden_size + c2.hidden_size != u.cross_attention_dim)
    throw Error(where + ": the text encoders' widths " + std::to_string(c1.hidden_size) + " + " +
                std::to_string(c2.hidden_size) + " do not add up to the UNet's " +
                "cross_attention_dim " + std::to_string(u.cross_attention_dim));
  if (u.projection_class_embeddings_input_dim - c2.projection_dim != 6 * u.addition_time_embed_dim)
    throw Error(where + ": the UNet's addition embedding takes " +
                std::to_string(u.projection_class_embeddings_input_dim) +
                " inputs, not the second text encoder's projection_dim " +
                std::to_string(c2.projection_dim) + " plus 6 x addition_time_embed_dim " +
                std::to_string(u.addition_time_embed_dim));
}

void load_diffusers_folder(const ModelFiles& files, const LoadOptions& options,
                           StableDiffusionModel& model) {
  {
    const auto& index_path = files.model_index;
    const auto index = read_json_file(index_path);
    if (index.is_object() && index.contains("force_zeros_for_empty_prompt")) {
      const auto& v = index["force_zeros_for_empty_prompt"];
      if (!v.is_boolean())
        throw Error(index_path + ": \"force_zeros_for_empty_prompt\" must be true or false");
      model.force_zeros_for_empty_prompt = v.get<bool>();
    } else {
      model.force_zeros_for_empty_prompt = true;  // StableDiffusionXLPipeline's default
    }
    if (index.is_object() && index.contains("_sdgen_guidance_rescale")) {
      const auto& v = index["_sdgen_guidance_rescale"];
      if (!v.is_number() || !(v.get<double>() >= 0) || v.get<double>() > 1)
        throw Error(index_path + ": \"_sdgen_guidance_rescale\" must be a number from 0 to 1");
      model.default_guidance_rescale = v.get<double>();
    }
  }
  const auto unet_cfg = UNetConfig::from_json(component_config(files.unet, "UNet"));
  const auto vae_cfg = VAEConfig::from_json(component_config(files.vae, "VAE"));
  const auto clip_cfg =
      CLIPTextConfig::from_json(component_config(files.text_encoder, "text encoder"));
  const bool sdxl = unet_cfg.addition_embed_type == "text_time";
  model.family = sdxl ? "SDXL" : unet_cfg.cross_attention_dim >= 1024 ? "SD2.x" : "SD1.x";
  if (!sdxl) model.force_zeros_for_empty_prompt = false;
  model.scheduler_config = scheduler_config_of(files, sdxl);
  model.vae_dtype = vae_dtype_for(options, vae_cfg, sdxl);

  TokenizerConfig tok_fallback;
  if (model.family == "SD2.x") tok_fallback.pad_token = "!";
  model.tokenizer = load_tokenizer(files, tok_fallback);
  check_tokenizer_fits(*model.tokenizer, clip_cfg);
  if (sdxl) {
    const auto clip2_cfg =
        CLIPTextConfig::from_json(component_config(files.text_encoder_2, "text_encoder_2"));
    model.tokenizer_2 = load_tokenizer_2(files);
    check_tokenizer_fits(*model.tokenizer_2, clip2_cfg);
    SafeTensorsFile f(require_weights(files.text_encoder_2));
    const TensorMap weights = text_encoder_tensors(tensors_with_prefix(f, ""));
    load_text_encoder_2(model, clip2_cfg, weights, "text_encoder_2 (" + f.path() + ")", options);
    keep_sources(model, "text_encoder_2", weights);
  }

  {
    SafeTensorsFile f(require_weights(files.text_encoder));
    model.text_encoder = CLIPTextModel(clip_cfg);
    const TensorMap weights = text_encoder_tensors(tensors_with_prefix(f, ""));
    place_and_load(model.text_encoder, weights, "text_encoder (" + f.path() + ")", options);
    keep_sources(model, "text_encoder", weights);
  }
  {
    SafeTensorsFile f(require_weights(files.unet));
    model.unet = UNet2DConditionModel(unet_cfg);
    const TensorMap weights = tensors_with_prefix(f, "");
    place_and_load(model.unet, weights, "unet (" + f.path() + ")", options);
    keep_sources(model, "unet", weights);
  }
  {
    SafeTensorsFile f(require_weights(files.vae));
    model.vae = AutoencoderKL(vae_cfg);
    place_and_load(model.vae, tensors_with_prefix(f, ""), "vae (" + f.path() + ")", options,
                   model.vae_dtype);
  }
  if (sdxl) check_sdxl_widths(model, files.model_path);
}

void load_single_file(const ModelFiles& files, const LoadOptions& options,
                      StableDiffusionModel& model) {
  const fs::path path(files.model_path);
  SafeTensorsFile file(path.string());
  const TensorMap all = tensors_with_prefix(file, "");
  ModelFamily family;
  try {
    family = detect_family(all);
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  }
  const bool sdxl = family == ModelFamily::SDXL;
  model.family = sdxl ? "SDXL" : family == ModelFamily::SD2 ? "SD2.x" : "SD1.x";
  model.force_zeros_for_empty_prompt = sdxl;

  UNetConfig unet_cfg;
  VAEConfig vae_cfg;
  CLIPTextConfig clip_cfg, clip2_cfg;
  TokenizerConfig tok_fallback;
  if (family == ModelFamily::SD2) tok_fallback.pad_token = "!";
  if (!files.unet.config.empty()) {
    if (!fs::is_directory(options.config_dir))
      throw Error(options.config_dir + ": --config must be a folder");
    unet_cfg = UNetConfig::from_json(component_config(files.unet, "UNet"));
    vae_cfg = VAEConfig::from_json(component_config(files.vae, "VAE"));
    clip_cfg = CLIPTextConfig::from_json(component_config(files.text_encoder, "text encoder"));
    if (sdxl)
      clip2_cfg =
          CLIPTextConfig::from_json(component_config(files.text_encoder_2, "text_encoder_2"));
    if (sdxl != (unet_cfg.addition_embed_type == "text_time"))
      throw Error(path.string() + " is " + (sdxl ? "an SDXL" : "an SD1/SD2") +
                  " checkpoint but the --config folder's UNet is " +
                  (sdxl ? "not SDXL's" : "SDXL's") + " (addition_embed_type)");
  } else {
    try {
      unet_cfg = infer_unet_config(all, family);
      vae_cfg = infer_vae_config(all, family);
      clip_cfg = infer_clip_config(all, family);
      if (sdxl) clip2_cfg = infer_clip2_config(all);
    } catch (const Error& e) {
      throw Error(path.string() + ": " + e.what());
    }
  }
  model.scheduler_config = scheduler_config_of(files, sdxl);
  model.vae_dtype = vae_dtype_for(options, vae_cfg, sdxl);
  model.tokenizer = load_tokenizer(files, tok_fallback);
  check_tokenizer_fits(*model.tokenizer, clip_cfg);
  if (sdxl) {
    model.tokenizer_2 = load_tokenizer_2(files);
    check_tokenizer_fits(*model.tokenizer_2, clip2_cfg);
  }

  ConvertedWeights converted =
      convert_single_file(all, family, unet_cfg, vae_cfg, clip_cfg, clip2_cfg);
  const std::string where = " (" + path.string() + ")";
  // Errors name the file's own key of a converted tensor (the same memory).
  const auto file_key = [&all](const torch::Tensor& t) -> std::string {
    if (!t.defined() || t.numel() == 0) return "";
    for (const auto& [key, source] : all)
      if (source.numel() > 0 && source.data_ptr() == t.data_ptr() && source.nbytes() == t.nbytes())
        return key;
    return "";
  };
  model.text_encoder = CLIPTextModel(clip_cfg);
  place_and_load(model.text_encoder, converted.text_encoder, "text encoder" + where, options, {},
                 file_key);
  keep_sources(model, "text_encoder", converted.text_encoder);
  converted.text_encoder.clear();
  if (sdxl) {
    load_text_encoder_2(model, clip2_cfg, converted.text_encoder_2, "text encoder 2" + where,
                        options, file_key);
    keep_sources(model, "text_encoder_2", converted.text_encoder_2);
    converted.text_encoder_2.clear();
  }
  model.unet = UNet2DConditionModel(unet_cfg);
  place_and_load(model.unet, converted.unet, "unet" + where, options, {}, file_key);
  keep_sources(model, "unet", converted.unet);
  converted.unet.clear();
  model.vae = AutoencoderKL(vae_cfg);
  place_and_load(model.vae, converted.vae, "vae" + where, options, model.vae_dtype, file_key);
  if (sdxl) check_sdxl_widths(model, path.string());
}

}  // namespace

StableDiffusionModel load_model(const LoadOptions& options) {
  torch::NoGradGuard no_grad;
  StableDiffusionModel model;
  model.source = options.model_path;
  model.device = options.device;
  model.dtype = options.dtype;
  model.vae_dtype = options.vae_dtype.value_or(options.dtype);
  model.cuda_graphs = options.cuda_graphs;
  model.channels_last = resolve_channels_last(options);
  model.weights_as_stored = weights_kept_as_stored(options);
  if (options.device.is_cuda()) {
    // Let cuDNN time its convolution algorithms once per shape (fp16/bf16;
    // in fp32 the search tried workspaces of most of the card, 137 GB on an
    // H200), and keep fp32 exact (no TF32) so that it matches the CPU reference.
    at::globalContext().setBenchmarkCuDNN(options.dtype != torch::kFloat32);
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  const ModelFiles files = resolve_model_files(options);
  model.layout = layout_name(files.layout);
  if (files.layout == ModelLayout::diffusers) {
    load_diffusers_folder(files, options, model);
  } else {
    load_single_file(files, options, model);
  }
  apply_prediction_override(model.scheduler_config, options.prediction_type);
  if (!options.vae_path.empty()) {
    model.vae_file = separate_vae_weights_file(options.vae_path);
    model.vae = load_separate_vae(
        options.vae_path, model.vae->config(),
        {options.device, model.vae_dtype, model.channels_last, {}, model.weights_as_stored});
  }

  if (options.verbose)
    std::cerr << "sdgen: loaded " << model.family << " model (" << model.layout << ") from "
              << options.model_path << ", prediction " << model.scheduler_config.prediction_type
              << "\n";
  return model;
}

}  // namespace sdgen
