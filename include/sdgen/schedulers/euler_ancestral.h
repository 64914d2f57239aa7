#pragma once

// Euler ancestral sampler (k-diffusion's sample_euler_ancestral), following
// diffusers' EulerAncestralDiscreteScheduler
// (scheduling_euler_ancestral_discrete.py). A1111's "Euler a".

#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

class EulerAncestralDiscreteScheduler : public Scheduler {
 public:
  // diffusers' EulerAncestral has no Karras/exponential sigmas: the config's
  // use_karras_sigmas is ignored, as diffusers ignores it.
  explicit EulerAncestralDiscreteScheduler(SchedulerConfig config);

  std::string name() const override { return "euler_a"; }
  void set_timesteps(int num_inference_steps) override;
  // max sigma ("linspace", "trailing") or sqrt(max sigma^2 + 1) ("leading").
  double init_noise_sigma() const override;
  // sample / sqrt(sigma^2 + 1).
  torch::Tensor scale_model_input(const torch::Tensor& sample, double timestep) override;
  // diffusers EulerAncestralDiscreteScheduler.step: one noise tensor of the
  // model output's shape is drawn from `generator` at every step (the last
  // one too, where it is scaled by sigma_up = 0). prediction_type "sample" is
  // not supported (diffusers raises too).
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;
  // original + noise * sigma (diffusers add_noise).
  torch::Tensor add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                          double timestep) const override;

  int step_index() const { return step_index_; }
  const torch::Tensor& sigmas_tensor() const { return sigmas_t_; }

 private:
  void init_step_index(double timestep);
  int noise_index(double timestep) const;

  torch::Tensor alphas_cumprod_;  // float32, with the zero-SNR tweak of __init__
  torch::Tensor sigmas_t_;        // float32 [steps + 1]
};

}  // namespace sdgen
