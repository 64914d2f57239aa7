#pragma once

// Latent consistency models (Luo et al. 2023, arXiv 2310.04378), following
// diffusers' LCMScheduler (scheduling_lcm.py).

#include <torch/torch.h>

#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

class LCMScheduler : public Scheduler {
 public:
  // Reads the raw config keys original_inference_steps (default 50) and
  // timestep_scaling (default 10.0).
  explicit LCMScheduler(SchedulerConfig config);

  std::string name() const override { return "lcm"; }
  // diffusers LCMScheduler.set_timesteps(num_inference_steps) with
  // strength 1: a subset of the `original_inference_steps` skipping schedule.
  void set_timesteps(int num_inference_steps) override;
  // diffusers LCMScheduler.step: the consistency function's x_0, re-noised
  // to the next timestep with noise from `generator` except after the last.
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;

  int original_inference_steps() const { return original_inference_steps_; }
  double timestep_scaling() const { return timestep_scaling_; }
  float final_alpha_cumprod() const { return final_alpha_cumprod_; }
  // The x_0 estimate of the last step() (diffusers' `denoised` output).
  const torch::Tensor& denoised() const { return denoised_; }

 private:
  int original_inference_steps_ = 50;
  double timestep_scaling_ = 10.0;
  float final_alpha_cumprod_ = 1.0f;
  torch::Tensor denoised_;
};

}  // namespace sdgen
