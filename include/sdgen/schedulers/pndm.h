#pragma once

// Pseudo numerical methods for diffusion models (Liu et al. 2022, arXiv
// 2202.09778), following diffusers' PNDMScheduler (scheduling_pndm.py).
// With skip_prk_steps (Stable Diffusion's config) this is PLMS.

#include <vector>

#include <torch/torch.h>

#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

class PNDMScheduler : public Scheduler {
 public:
  explicit PNDMScheduler(SchedulerConfig config);

  std::string name() const override { return "pndm"; }
  // diffusers PNDMScheduler.set_timesteps: timesteps() holds every model
  // call, e.g. n + 1 entries for PLMS (the second timestep is repeated).
  void set_timesteps(int num_inference_steps) override;
  // diffusers PNDMScheduler.step: step_prk for the Runge-Kutta warm-up
  // (skip_prk_steps false), step_plms afterwards. Deterministic.
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;

  float final_alpha_cumprod() const { return final_alpha_cumprod_; }
  // Number of Runge-Kutta model calls at the start of timesteps().
  size_t num_prk_timesteps() const { return prk_timesteps_.size(); }

 private:
  torch::Tensor step_prk(const torch::Tensor& model_output, int64_t timestep,
                         const torch::Tensor& sample);
  torch::Tensor step_plms(const torch::Tensor& model_output, int64_t timestep,
                          const torch::Tensor& sample);
  // diffusers PNDMScheduler._get_prev_sample, formula (9) of arXiv 2202.09778.
  torch::Tensor prev_sample(const torch::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                            torch::Tensor model_output) const;

  float final_alpha_cumprod_ = 1.0f;
  std::vector<int64_t> prk_timesteps_;
  std::vector<int64_t> plms_timesteps_;
  // Running values of diffusers' PNDMScheduler.
  int counter_ = 0;
  torch::Tensor cur_model_output_;  // undefined == diffusers' 0
  torch::Tensor cur_sample_;        // undefined == None
  std::vector<torch::Tensor> ets_;
};

}  // namespace sdgen
