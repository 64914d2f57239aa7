// sdgen-mkmodel: makes random-weight models for smoke tests and benchmarks.
//
//   sdgen-mkmodel tiny --out DIR [--seed N]
//       A tiny SD1-shaped model in the diffusers folder layout, with a minimal
//       byte-level tokenizer vocabulary: everything the smoke test and a first
//       `scripts/generate.sh` need, made from nothing. Its pictures are noise.
//   sdgen-mkmodel tiny-sdxl --out DIR [--seed N]
//       The same for SDXL's architecture: two text encoders (the second with
//       a projection), a UNet with the text_time addition embedding and the
//       SDXL VAE scaling; for SDXL smoke tests.
//   sdgen-mkmodel manifest --manifest manifests.json --key sd15.single --out FILE.safetensors
//       A full-size checkpoint with the tensor names and shapes of a manifest
//       entry (random weights, fp16 by default) for speed and memory benchmarks.

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/random_model.h"
#include "sdgen/safetensors.h"
#include "sdgen/text_encoder.h"
#include "sdgen/tokenizer.h"
#include "sdgen/unet.h"
#include "sdgen/vae.h"
#include "sdgen/weights.h"

namespace fs = std::filesystem;

namespace {

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path);
  if (!out) throw sdgen::Error(path.string() + ": cannot write");
  out << text << "\n";
}

void write_module(const fs::path& file, torch::nn::Module& module, const std::string& prefix) {
  fs::create_directories(file.parent_path());
  sdgen::write_safetensors(file.string(), sdgen::named_tensors(module, prefix, torch::kFloat32),
                           {{"format", "pt"}});
}

// The tiny architecture: the same block types as SD1.5 (or SDXL), a few
// channels each.
void make_tiny(const fs::path& dir, uint64_t seed, bool sdxl) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  fs::create_directories(dir);
  sdgen::CLIPTokenizer::write_minimal_vocab((dir / "tokenizer").string());
  auto tokenizer = sdgen::CLIPTokenizer::from_path((dir / "tokenizer").string(), {});

  sdgen::CLIPTextConfig text;
  text.vocab_size = static_cast<int>(tokenizer->vocab_size());
  text.hidden_size = 32;
  text.intermediate_size = 64;
  text.num_hidden_layers = 2;
  text.num_attention_heads = 4;
  text.projection_dim = 32;
  text.bos_token_id = static_cast<int>(tokenizer->token_id("<|startoftext|>"));
  text.eos_token_id = static_cast<int>(tokenizer->token_id("<|endoftext|>"));
  text.pad_token_id = text.eos_token_id;

  sdgen::UNetConfig unet;
  unet.block_out_channels = {32, 64};
  unet.down_block_types = {"CrossAttnDownBlock2D", "DownBlock2D"};
  unet.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D"};
  unet.layers_per_block = 1;
  unet.attention_head_dim = {4, 4};
  unet.transformer_layers_per_block = {1, 1};
  unet.cross_attention_dim = 32;
  unet.sample_size = 8;

  // SDXL: the second encoder (gelu, projection 16) and a UNet conditioned on
  // both encoders' states (32 + 32) and on the pooled projection + 6 size ids.
  sdgen::CLIPTextConfig text2 = text;
  text2.hidden_act = "gelu";
  text2.num_hidden_layers = 3;
  text2.projection_dim = 16;
  text2.with_projection = true;
  if (sdxl) {
    unet.down_block_types = {"DownBlock2D", "CrossAttnDownBlock2D"};
    unet.up_block_types = {"CrossAttnUpBlock2D", "UpBlock2D"};
    unet.transformer_layers_per_block = {1, 2};
    unet.cross_attention_dim = text.hidden_size + text2.hidden_size;
    unet.use_linear_projection = true;
    unet.addition_embed_type = "text_time";
    unet.addition_time_embed_dim = 8;
    unet.projection_class_embeddings_input_dim = text2.projection_dim + 6 * 8;
  }

  sdgen::VAEConfig vae;
  vae.block_out_channels = {32, 32, 32, 32};
  vae.layers_per_block = 1;
  vae.sample_size = 64;
  if (sdxl) vae.scaling_factor = 0.13025;

  sdgen::CLIPTextModel text_model(text);
  sdgen::UNet2DConditionModel unet_model(unet);
  sdgen::AutoencoderKL vae_model(vae);
  sdgen::randomize_parameters(*text_model);
  sdgen::randomize_parameters(*unet_model);
  sdgen::randomize_parameters(*vae_model);

  write_module(dir / "text_encoder/model.safetensors", *text_model, "text_model.");
  write_module(dir / "unet/diffusion_pytorch_model.safetensors", *unet_model, "");
  write_module(dir / "vae/diffusion_pytorch_model.safetensors", *vae_model, "");
  write_text(dir / "text_encoder/config.json", text.to_json().dump(2));
  if (sdxl) {
    sdgen::CLIPTextModel text2_model(text2);
    sdgen::randomize_parameters(*text2_model);
    // transformers' CLIPTextModelWithProjection: text_projection sits beside text_model.
    auto tensors = sdgen::named_tensors(*text2_model, "text_model.", torch::kFloat32);
    for (auto& [name, tensor] : tensors)
      if (name == "text_model.text_projection.weight") name = "text_projection.weight";
    fs::create_directories(dir / "text_encoder_2");
    sdgen::write_safetensors((dir / "text_encoder_2/model.safetensors").string(), tensors,
                             {{"format", "pt"}});
    write_text(dir / "text_encoder_2/config.json", text2.to_json().dump(2));
    sdgen::CLIPTokenizer::write_minimal_vocab((dir / "tokenizer_2").string());
    sdgen::TokenizerConfig tok2;
    tok2.pad_token = "!";
    write_text(dir / "tokenizer_2/tokenizer_config.json", tok2.to_json().dump(2));
  }
  write_text(dir / "unet/config.json", unet.to_json().dump(2));
  write_text(dir / "vae/config.json", vae.to_json().dump(2));
  sdgen::SchedulerConfig sched;
  sched.class_name = sdxl ? "EulerDiscreteScheduler" : "DDIMScheduler";
  write_text(dir / "scheduler/scheduler_config.json", sched.to_json().dump(2));
  nlohmann::json index = {
      {"_class_name", sdxl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline"},
      {"_sdgen_note", "tiny random weights made by sdgen-mkmodel; pictures are noise"},
      {"scheduler", {"diffusers", sched.class_name}},
      {"text_encoder", {"transformers", "CLIPTextModel"}},
      {"tokenizer", {"transformers", "CLIPTokenizer"}},
      {"unet", {"diffusers", "UNet2DConditionModel"}},
      {"vae", {"diffusers", "AutoencoderKL"}}};
  if (sdxl) {
    index["text_encoder_2"] = {"transformers", "CLIPTextModelWithProjection"};
    index["tokenizer_2"] = {"transformers", "CLIPTokenizer"};
    index["force_zeros_for_empty_prompt"] = true;
  }
  write_text(dir / "model_index.json", index.dump(2));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sdgen-mkmodel: random-weight models for tests and benchmarks"};
  app.require_subcommand(1);
  std::string out, manifest, key = "sd15.single", dtype = "fp16";
  uint64_t seed = 0;
  auto* tiny = app.add_subcommand("tiny", "tiny SD1-shaped diffusers folder with a tiny tokenizer");
  tiny->add_option("-o,--out", out, "output folder")->required();
  tiny->add_option("--seed", seed, "weight seed");
  auto* tiny_xl = app.add_subcommand("tiny-sdxl", "tiny SDXL-shaped diffusers folder");
  tiny_xl->add_option("-o,--out", out, "output folder")->required();
  tiny_xl->add_option("--seed", seed, "weight seed");
  auto* full = app.add_subcommand("manifest", "full-size single file from a manifest entry");
  full->add_option("--manifest", manifest, "path to manifests.json")->required();
  full->add_option("--key", key, "manifest entry, e.g. sd15.single, sd21.single or sdxl.single")
      ->capture_default_str();
  full->add_option("-o,--out", out, "output .safetensors file")->required();
  full->add_option("--dtype", dtype, "fp16, bf16 or fp32")->capture_default_str();
  full->add_option("--seed", seed, "weight seed");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (tiny->parsed() || tiny_xl->parsed()) {
      make_tiny(out, seed, tiny_xl->parsed());
      std::cout << "wrote tiny random " << (tiny_xl->parsed() ? "SDXL " : "") << "model to " << out
                << "\n";
    } else {
      const auto written = sdgen::write_random_checkpoint(manifest, key, out, dtype, seed);
      std::cout << "wrote " << out << ": " << written.tensors << " tensors, " << written.parameters
                << " parameters (" << dtype << ")\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "sdgen-mkmodel: error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}
