#pragma once

// Text-to-image: the only place that knows the tokenizer, text encoder,
// scheduler, UNet and VAE together (diffusers' StableDiffusionPipeline).

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sdgen/model.h"
#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

struct GenerationRequest {
  std::string prompt;
  std::string negative_prompt;
  int steps = 50;
  double cfg_scale = 7.5;
  uint64_t seed = 0;
  int width = 512;
  int height = 512;
  int batch_size = 1;  // images per prompt, generated as one batch
  std::string sampler = "ddim";
  double eta = 0.0;   // DDIM eta
  int clip_skip = 1;  // A1111 convention: 1 = last layer, 2 = penultimate
  // "" (the sampler's own), "karras" or "normal": the sigma schedule of
  // sigma-based samplers (diffusers' use_karras_sigmas).
  std::string schedule;
  // img2img: uint8 [H, W, 3] image to start from (undefined for txt2img) and
  // how much of the schedule to run over it, 0 < strength <= 1.
  torch::Tensor init_image;
  double strength = 0.75;
};

struct StepInfo {
  int index = 0;  // 0-based step
  int total = 0;
  double timestep = 0;
};
using StepCallback = std::function<void(const StepInfo&, const torch::Tensor& latents)>;

struct GenerationResult {
  torch::Tensor images;     // [B, H, W, 3] float32 in [0, 1] (CPU)
  torch::Tensor images_u8;  // [B, H, W, 3] uint8 (CPU), round(images * 255)
  torch::Tensor latents;    // final latents [B, 4, H/8, W/8] (CPU, float32)
};

class Pipeline {
 public:
  explicit Pipeline(StableDiffusionModel& model) : model_(model) {}

  // Throws Error describing the first invalid field (sizes, steps, guidance, ...).
  void validate(const GenerationRequest& request) const;
  // Tokenize + encode, [N, 77, hidden] in the model's dtype on its device.
  torch::Tensor encode_prompts(const std::vector<std::string>& prompts, int clip_skip);
  GenerationResult generate(const GenerationRequest& request, const StepCallback& on_step = {});

  // The scheduler a request runs with (sampler, schedule type, DDIM eta), timesteps set.
  std::unique_ptr<Scheduler> make_request_scheduler(const GenerationRequest& request) const;
  // uint8 [H, W, 3] -> [1, 3, height, width] in [-1, 1] on the model's device and
  // dtype (diffusers' VaeImageProcessor.preprocess); resized when the size differs.
  torch::Tensor preprocess_image(const torch::Tensor& image, int height, int width) const;

 private:
  StableDiffusionModel& model_;
};

}  // namespace sdgen
