// Model folders of the training code (train.h): the diffusers layout sdgen-train
// writes, and the same folder opened again for more training.

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "sdgen/error.h"
#include "sdgen/safetensors.h"
#include "sdgen/weights.h"
#include "train/train.h"

namespace sdgen::train {

namespace {

namespace fs = std::filesystem;

void save_module(torch::nn::Module& module, const fs::path& path, const std::string& prefix) {
  fs::create_directories(path.parent_path());
  write_safetensors(path.string(), named_tensors(module, prefix, torch::kFloat16),
                    {{"format", "pt"}});
}

nlohmann::json config_of(const fs::path& dir, const std::string& what) {
  const auto path = dir / "config.json";
  if (!fs::exists(path)) throw Error(path.string() + ": missing " + what + " config");
  return read_json_file(path.string());
}

// The weights of `file` (keys starting with `prefix`, the prefix removed) into
// `module` as fp32 parameters; strict, errors name the file.
void load_fp32(torch::nn::Module& module, const fs::path& file, const std::string& prefix,
               const std::string& what) {
  if (!fs::exists(file)) throw Error(file.string() + ": missing " + what + " weights");
  SafeTensorsFile weights(file.string());
  WeightTarget target;
  target.dtype = torch::kFloat32;
  load_weights(module, tensors_with_prefix(weights, prefix), what + " (" + file.string() + ")",
               target);
}

}  // namespace

void write_text_file(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  const auto temp = path + ".tmp";
  std::ofstream out(temp, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw Error("cannot write " + path);
  fs::rename(temp, path);
}

TrainableModel load_trainable_model(const std::string& dir) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) throw Error(dir + ": not a model folder");
  TrainableModel m;
  m.arch.text = CLIPTextConfig::from_json(config_of(root / "text_encoder", "text encoder"));
  m.arch.unet = UNetConfig::from_json(config_of(root / "unet", "UNet"));
  m.arch.vae = VAEConfig::from_json(config_of(root / "vae", "VAE"));
  m.tokenizer_dir = (root / "tokenizer").string();
  TokenizerConfig tokenizer_config;
  const auto tokenizer_config_path = root / "tokenizer" / "tokenizer_config.json";
  if (fs::exists(tokenizer_config_path))
    tokenizer_config = TokenizerConfig::from_json(read_json_file(tokenizer_config_path.string()));
  m.tokenizer = tokenizer_from_path(m.tokenizer_dir, tokenizer_config);

  m.text_encoder = CLIPTextModel(m.arch.text);
  m.unet = UNet2DConditionModel(m.arch.unet);
  m.vae = AutoencoderKL(m.arch.vae);
  const auto scheduler_path = root / "scheduler" / "scheduler_config.json";
  if (fs::exists(scheduler_path))
    m.scheduler = SchedulerConfig::from_json(read_json_file(scheduler_path.string()));
  load_fp32(*m.text_encoder, root / "text_encoder" / "model.safetensors", "text_model.",
            "text encoder");
  load_fp32(*m.unet, root / "unet" / "diffusion_pytorch_model.safetensors", "", "unet");
  load_fp32(*m.vae, root / "vae" / "diffusion_pytorch_model.safetensors", "", "vae");
  return m;
}

void write_model_folder(const std::string& out_dir, const DemoArchitecture& arch,
                        CLIPTextModel& text_encoder, UNet2DConditionModel& unet, AutoencoderKL& vae,
                        const std::string& tokenizer_dir, const SchedulerConfig& scheduler) {
  const fs::path out(out_dir);
  if (fs::exists(out / "tokenizer") && fs::exists(tokenizer_dir) &&
      fs::equivalent(out / "tokenizer", fs::path(tokenizer_dir)))
    throw Error("cannot write a model folder over the folder its tokenizer comes from: " + out_dir);
  save_module(*text_encoder, out / "text_encoder/model.safetensors", "text_model.");
  save_module(*unet, out / "unet/diffusion_pytorch_model.safetensors", "");
  save_module(*vae, out / "vae/diffusion_pytorch_model.safetensors", "");
  write_text_file((out / "text_encoder/config.json").string(), arch.text.to_json().dump(2));
  write_text_file((out / "unet/config.json").string(), arch.unet.to_json().dump(2));
  write_text_file((out / "vae/config.json").string(), arch.vae.to_json().dump(2));
  write_text_file((out / "scheduler/scheduler_config.json").string(), scheduler.to_json().dump(2));
  fs::create_directories(out / "tokenizer");
  for (const auto& entry : fs::directory_iterator(tokenizer_dir)) {
    fs::copy_file(entry.path(), out / "tokenizer" / entry.path().filename(),
                  fs::copy_options::overwrite_existing);
  }
  nlohmann::json index = {
      {"_class_name", "StableDiffusionPipeline"},
      {"_sdgen_note",
       "trained by sdgen-train on the synthetic shapes world (scripts/train-default-model.sh)"},
      {"scheduler", {"diffusers", scheduler.class_name}},
      {"text_encoder", {"transformers", "CLIPTextModel"}},
      {"tokenizer", {"sdgen", "SentencePieceTokenizer"}},
      {"unet", {"diffusers", "UNet2DConditionModel"}},
      {"vae", {"diffusers", "AutoencoderKL"}}};
  // Zero-terminal-SNR v models overexpose under plain guidance: Lin et al.
  // 2023 (section 3.4) rescale it by 0.7, sdgen's default for such a folder.
  if (scheduler.rescale_betas_zero_snr) index["_sdgen_guidance_rescale"] = 0.7;
  write_text_file((out / "model_index.json").string(), index.dump(2));
}

}  // namespace sdgen::train
