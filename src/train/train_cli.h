#pragma once

// The subcommands of the sdgen-train tool (tools/sdgen_train.cpp, which parses
// their flags into these options and calls them). Private to the tool and its
// tests; the training itself is train.h's.

#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "sdgen/runtime.h"

namespace sdgen::train::cli {

// The noise and caption options of a text encoder + UNet run, the same flags in `all`
// (its UNet stages) and `finetune`.
struct NoiseOptions {
  double offset = 0.15;
  double high_noise_share = 0.0;  // of each batch, drawn from t >= 500
  double pyramid = 0.0;           // discount of the multi-resolution noise
  double swap_pairs = 0.0;        // chance a pair caption is said the other way round
};

// Training precision: bf16 autocast (fp32 weights, optimizer and EMA) on a
// GPU, where the CPU computes bf16 natively (avx512_bf16, AMX) or when asked for; else
// fp32, since libtorch emulates bf16 on other CPUs: on an AVX2-only EPYC two
// bf16 fine-tuning runs at one thread each did not reach step 50 of batch 32
// in 10 minutes, while one fp32 run at two threads takes 3.9 s per step.
struct Precision {
  bool fp32 = false;  // --fp32
  bool bf16 = false;  // --bf16
  bool autocast(const torch::Device& device = torch::kCPU) const {
    return !fp32 && (bf16 || device.is_cuda() || cpu_has_native_bf16());
  }
  const char* name(const torch::Device& device = torch::kCPU) const {
    return autocast(device) ? "bf16 autocast" : "fp32";
  }
};

struct AllOptions {
  std::string out = "models/default";
  std::string work = "build/train";
  uint64_t seed = 0;
  int threads = 0;
  int captions = 20000;
  int vocab_size = 200;
  int vae_steps = 1500;
  int vae_batch = 8;
  int vae_crop = 96;
  int decoder_steps = 500;  // second VAE stage: decoder only, on whole pictures
  int decoder_batch = 2;
  int decoder_crop = 512;
  double decoder_lr = 1e-4;
  int train_images = 4000;
  std::string pair_layout = "free";  // of the first UNet stage's scenes: free or halves
  int unet_steps = 7500;
  int unet_batch = 32;
  double unet_lr = 1e-3;
  NoiseOptions noise;   // of the UNet stages
  Precision precision;  // of the decoder and UNet stages
  // Second UNet stage (0 = none): fine-tunes the first stage's weights on
  // scenes with PairLayout::kHalves pairs.
  int refine_steps = 0;
  int refine_images = 8000;
  double refine_lr = 1.5e-4;
  int stop_after = 0;
  bool vae_only = false;
  // Fixed when the UNet stage is set up (0 = the work folder's, else the default).
  int text_layers = 0;
  int text_width = 0;
  int attention_levels = 0;
  int context = 0;  // tokens per prompt (the tokenizer's model_max_length)
};

struct FinetuneOptions {
  std::string model;  // the model folder training starts from
  std::string work;
  std::string out;
  uint64_t seed = 0;
  int threads = 0;
  int steps = 4000;
  int batch = 32;
  double lr = 1.5e-4;
  int warmup = 200;
  int images = 4000;                   // 512x512 scenes encoded with the model's VAE
  std::string pair_layout = "halves";  // of those scenes: free or halves
  NoiseOptions noise;
  Precision precision;
  int stop_after = 0;
  std::string device = "auto";
  std::string prediction;    // epsilon | v_prediction; "" = the model folder's
  std::string terminal_snr;  // sd | zero; "" = the model folder's
};

struct EvalOptions {
  std::string model;
  int seeds = 20;
  int prompts = 10;
  int steps = 20;
  double cfg = 7.5;
  double guidance_rescale = -1;  // the model's default
  std::string sampler = "ddim";
  std::string save;
  std::string dtype = "auto";
  int threads = 0;
  bool training_prompts = false;
  bool one_shape = false;
  bool reversed_too = false;
};

// Each returns the tool's exit status and throws sdgen::Error on bad input.

// `all`: the whole recipe, each stage skipped when its result is in the work
// folder. `self` is the tool's argv[0] (sdgen-spm is found beside it).
int run_all(const AllOptions& options, const std::string& self);
// `finetune`: more training of a model folder's text encoder and UNet.
int run_finetune(const FinetuneOptions& options);
// `render`: `count` training renders and their captions (captions.tsv) in `out`.
int run_render(const std::string& out, int count, uint64_t seed);
// `export`: the model folder from a work folder's training checkpoint.
int run_export(const std::string& work_dir, const std::string& out_dir, bool live,
               const std::string& checkpoint);
// `eval-vae`: checker pass rate of VAE reconstructions of training renders.
int run_eval_vae(const std::string& vae_file, const std::string& work_dir, int count,
                 const std::string& save);
// `eval`: checker pass rate of generated held-out (or training) prompts.
int run_eval(const EvalOptions& options);

}  // namespace sdgen::train::cli
