#pragma once

// What the sdgen-train subcommands (train_cli_*.cpp) share: timing and log
// lines, module and latent files, and a work folder's tokenizer and sizes.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "sdgen/tokenizer.h"
#include "synth/synth_world.h"
#include "train/train.h"
#include "train/train_cli.h"

namespace sdgen::train::cli {

namespace fs = std::filesystem;

using Clock = std::chrono::steady_clock;

// Seconds since `start`.
double since(Clock::time_point start);

void write_text(const fs::path& path, const std::string& text);

// "[stage] step 3/10 loss 0.12345  12 s" on stderr.
void log_line(const std::string& stage, int step, int total, double loss, Clock::time_point start);

// What `all`'s UNet stages (on the CPU) and `finetune` set alike in a training
// run's options; the precision follows `device`.
DiffusionTrainOptions diffusion_run_options(int steps, int batch, double lr,
                                            const torch::Device& device, const Precision& precision,
                                            const NoiseOptions& noise, int stop_after,
                                            uint64_t seed, const fs::path& checkpoint);

void save_module(torch::nn::Module& module, const fs::path& path, const std::string& prefix,
                 torch::ScalarType dtype);
void load_module(torch::nn::Module& module, const fs::path& path, const std::string& prefix,
                 const std::string& what);

LatentSet load_latents(const fs::path& path);

// Latents of `count` training scenes from `path`, encoded and saved there first
// when missing.
LatentSet training_latents(AutoencoderKL& vae, const fs::path& path, int count, uint64_t seed,
                           synth::PairLayout layout, const torch::Device& device = torch::kCPU);

nlohmann::json read_json(const fs::path& path);

// The sizes of a work folder's text encoder and UNet: its architecture.json
// (written when its UNet stage is set up), else the defaults (the shipped
// model's; folders from before the file existed).
DemoSizes work_sizes(const fs::path& work);

struct Trained {
  std::unique_ptr<Tokenizer> tokenizer;
  DemoArchitecture arch;
};
// The tokenizer of a work folder and the architecture sized for it.
Trained work_architecture(const fs::path& work);

}  // namespace sdgen::train::cli
