// --info (what a model is) and --show-params (the A1111 parameters of a PNG).

#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "default_model.h"
#include "options.h"
#include "sdgen/a1111.h"
#include "sdgen/error.h"
#include "sdgen/extra_networks.h"
#include "sdgen/image_io.h"
#include "sdgen/lora.h"
#include "sdgen/lora_keys.h"
#include "sdgen/model.h"
#include "sdgen/model_files.h"
#include "sdgen/runtime.h"
#include "sdgen/safetensors.h"
#include "sdgen/sha256.h"

namespace fs = std::filesystem;

namespace sdgen::cli {
namespace {

int64_t parameter_count(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

std::string with_commas(int64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// The tokenizer load_model takes (resolve_model_files, in its search order).
std::string tokenizer_source(const Settings& o, const std::string& model_path, bool /*folder*/) {
  if (!o.tokenizer.empty()) return o.tokenizer + " (--tokenizer)";
  LoadOptions load;
  load.model_path = model_path;
  load.config_dir = o.config_dir;
  const ModelFiles files = resolve_model_files(load);
  return files.tokenizer.empty() ? "(not found)" : files.tokenizer;
}

// Stored dtypes of the safetensors files load_model reads, per component:
// "F16 (1131)".
std::map<std::string, std::map<std::string, int>> stored_dtypes(const std::string& model_path,
                                                                bool /*folder*/) {
  std::map<std::string, std::map<std::string, int>> out;
  auto add_file = [&out](const std::string& file, const std::string& fixed) {
    const SafeTensorsFile f(file);
    for (const auto& [name, info] : f.tensors()) {
      std::string component = fixed;
      if (component.empty()) {
        if (name.rfind("model.diffusion_model.", 0) == 0)
          component = "unet";
        else if (name.rfind("first_stage_model.", 0) == 0)
          component = "vae";
        else if (name.rfind("conditioner.embedders.1.", 0) == 0)
          component = "text_encoder_2";  // SDXL's OpenCLIP ViT-bigG
        else if (name.rfind("cond_stage_model.", 0) == 0 || name.rfind("conditioner.", 0) == 0)
          component = "text_encoder";
        else
          component = "other";
      }
      ++out[component][dtype_name(info.dtype)];
    }
  };
  LoadOptions load;
  load.model_path = model_path;
  const ModelFiles files = resolve_model_files(load);
  if (files.layout == ModelLayout::single_file) {
    add_file(files.model_path, "");
    return out;
  }
  for (const auto& [component, part] :
       {std::pair{"text_encoder", &files.text_encoder},
        std::pair{"text_encoder_2", &files.text_encoder_2}, std::pair{"unet", &files.unet},
        std::pair{"vae", &files.vae}}) {
    std::error_code ec;
    if (fs::exists(part->weights, ec)) add_file(part->weights, component);
  }
  return out;
}

// --info on LoRA files (--model FILE that is one, or --lora FILE...): what
// each is, from its keys and shapes. false when there is none to describe.
bool describe_loras(const Settings& o) {
  bool model_is_lora = false;
  std::error_code ec;
  if (!o.model.empty() && fs::is_regular_file(o.model, ec)) {
    try {
      const SafeTensorsFile f(o.model);
      bool unet = false;
      for (const auto& [name, info] : f.tensors())
        if (name.rfind("model.diffusion_model.", 0) == 0 || name.rfind("down_blocks.", 0) == 0)
          unet = true;
      std::string layer, suffix;
      for (const auto& [name, info] : f.tensors())
        if (!unet && split_lora_key(name, &layer, &suffix)) model_is_lora = true;
    } catch (const Error&) {
      // not a safetensors file: the model loader says what is wrong
    }
  }
  std::vector<std::string> files;
  if (model_is_lora) files.push_back(o.model);
  if (model_is_lora || o.model.empty())
    for (const auto& item : o.lora) files.push_back(parse_lora_argument(item).name);
  if (files.empty()) return false;
  nlohmann::json all = nlohmann::json::array();
  for (const auto& path : files) {
    LoraSummary s;
    try {
      s = summarize_lora(path);
    } catch (const Error& e) {
      throw CliError(kExitModel, e.what());
    }
    nlohmann::json j = {{"path", path},
                        {"kind", "LoRA"},
                        {"format", s.format},
                        {"family", s.family},
                        {"layers", s.layers},
                        {"text_encoder_layers", s.te_layers},
                        {"unet_layers", s.unet_layers},
                        {"rank", s.max_rank},
                        {"convolutions", s.conv},
                        {"loha", s.loha}};
    all.push_back(j);
    if (o.json) continue;
    std::cout << "lora:        " << path << "\n"
              << "format:      " << s.format << (s.loha ? " (LoHa)" : "")
              << (s.conv ? ", with 3x3 convolution layers (LoCon)" : "") << "\n"
              << "family:      " << s.family << "\n"
              << "layers:      " << s.layers << " (text encoder " << s.te_layers << ", UNet "
              << s.unet_layers << ")\n"
              << "rank:        " << s.max_rank << "\n";
  }
  if (o.json) std::cout << (all.size() == 1 ? all[0] : all).dump(2) << std::endl;
  return true;
}

}  // namespace

int run_info(const Settings& o) {
  init_cpu_runtime(o.threads);
  if (describe_loras(o)) return kExitOk;
  LoadOptions load;
  load.model_path = o.model.empty() ? find_default_model() : o.model;
  load.config_dir = o.config_dir;
  load.tokenizer_path = o.tokenizer;
  load.prediction_type = to_string(o.prediction);
  // The architecture and counts do not depend on the device: load on the CPU
  // in the stored precision's float32 (cheap for inspection).
  load.device = torch::kCPU;
  load.dtype = torch::kFloat32;
  load.cuda_graphs = false;
  StableDiffusionModel model;
  std::map<std::string, std::map<std::string, int>> dtypes;
  try {
    model = load_model(load);
    dtypes = stored_dtypes(load.model_path, model.layout == "diffusers");
  } catch (const Error& e) {
    throw CliError(kExitModel, e.what());
  } catch (const c10::Error& e) {
    throw CliError(kExitModel, e.what_without_backtrace());
  }
  const bool folder = model.layout == "diffusers";
  std::string hash;
  try {
    hash = model_sha256(load.model_path);
  } catch (const Error& e) {
    hash = std::string("(") + e.what() + ")";
  }
  const int64_t n_text = parameter_count(*model.text_encoder);
  const int64_t n_text2 = model.text_encoder_2 ? parameter_count(*model.text_encoder_2) : 0;
  const int64_t n_unet = parameter_count(*model.unet);
  const int64_t n_vae = parameter_count(*model.vae);
  const auto& text_cfg = model.text_encoder->config();
  const std::string tokenizer = tokenizer_source(o, load.model_path, folder);
  // The clip skip range (SDXL: both encoders', 1 and 2 being the same layer).
  int text_layers = text_cfg.num_hidden_layers;
  if (model.text_encoder_2)
    text_layers = std::min(text_layers, model.text_encoder_2->config().num_hidden_layers);
  const int native = model.unet->config().sample_size * model.vae->downsample_factor();
  // An inpainting UNet takes the mask and the masked image's latents too.
  const bool inpainting = model.unet->config().in_channels != model.vae->config().latent_channels;

  nlohmann::json j = {
      {"model", load.model_path},
      {"layout", model.layout},
      {"family", model.family},
      {"inpainting", inpainting},
      {"prediction_type", model.scheduler_config.prediction_type},
      {"scheduler", model.scheduler_config.class_name},
      {"default_guidance_rescale", model.default_guidance_rescale
                                       ? nlohmann::json(*model.default_guidance_rescale)
                                       : nlohmann::json(nullptr)},
      {"parameters",
       {{"text_encoder", n_text},
        {"text_encoder_2", n_text2},
        {"unet", n_unet},
        {"vae", n_vae},
        {"total", n_text + n_text2 + n_unet + n_vae}}},
      {"stored_dtypes", dtypes},
      {"text_layers", text_layers},
      {"native_size", native},
      {"vae_scaling_factor", model.vae->config().scaling_factor},
      {"tokenizer", tokenizer},
      {"sha256", hash},
      {"model_hash", hash.size() == 64 ? hash.substr(0, 10) : ""},
      {"name", a1111_model_name(load.model_path)}};
  if (o.json) {
    std::cout << j.dump(2) << std::endl;
    return kExitOk;
  }
  auto dtype_text = [&dtypes](const std::string& component) {
    std::string s;
    auto it = dtypes.find(component);
    if (it == dtypes.end()) return std::string("-");
    for (const auto& [name, count] : it->second)
      s += (s.empty() ? "" : ", ") + name + " (" + std::to_string(count) + " tensors)";
    return s;
  };
  std::cout << "model:       " << load.model_path << " (" << model.layout << ")\n"
            << "family:      " << model.family
            << (inpainting
                    ? " inpainting (UNet with " + std::to_string(model.unet->config().in_channels) +
                          " input channels: use --init-image and --mask)"
                    : std::string())
            << "\n"
            << "prediction:  " << model.scheduler_config.prediction_type << " ("
            << model.scheduler_config.class_name << " config)\n"
            << "parameters:  text encoder " << with_commas(n_text) << " ("
            << dtype_text("text_encoder") << ")\n";
  if (model.text_encoder_2)
    std::cout << "             text encoder 2 " << with_commas(n_text2) << " ("
              << dtype_text("text_encoder_2") << ", projection "
              << model.text_encoder_2->config().projection_dim << ")\n";
  std::cout << "             unet " << with_commas(n_unet) << " (" << dtype_text("unet") << ")\n"
            << "             vae " << with_commas(n_vae) << " (" << dtype_text("vae") << ")\n"
            << "             total " << with_commas(n_text + n_text2 + n_unet + n_vae) << "\n"
            << "native size: " << native << "x" << native << " (the default -W/-H)\n";
  if (dtypes.count("other")) std::cout << "other:       " << dtype_text("other") << "\n";
  if (model.default_guidance_rescale)
    std::cout << "guidance:    --guidance-rescale " << *model.default_guidance_rescale
              << " unless given (model_index.json)\n";
  std::cout << "text layers: " << text_layers << " (--clip-skip 1.." << text_layers
            << (model.is_sdxl() ? "; 1 and 2 are both SDXL's penultimate layer" : "") << ")\n"
            << "tokenizer:   " << tokenizer << "\n"
            << "model hash:  " << j["model_hash"].get<std::string>() << " (sha256 " << hash
            << ")\n";
  return kExitOk;
}

int run_show_params(const Settings& o) {
  PngImage png;
  try {
    png = read_png(o.show_params);
  } catch (const Error& e) {
    throw CliError(kExitUsage, e.what());
  }
  const std::string* text = nullptr;
  for (const auto& [key, value] : png.text)
    if (key == "parameters") text = &value;
  if (!text) throw CliError(kExitUsage, o.show_params + ": no A1111 'parameters' text chunk");
  if (!o.json) {
    std::cout << *text << std::endl;
    return kExitOk;
  }
  const A1111Parameters p = parse_a1111_parameters(*text);
  nlohmann::json fields = nlohmann::json::object();
  for (const auto& [k, v] : p.fields) fields[k] = v;
  nlohmann::json j = {{"path", o.show_params},
                      {"parameters", *text},
                      {"prompt", p.prompt},
                      {"negative_prompt", p.negative_prompt},
                      {"fields", fields}};
  std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  return kExitOk;
}

}  // namespace sdgen::cli
