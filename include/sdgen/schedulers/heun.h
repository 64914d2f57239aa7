#pragma once

// Heun's 2nd-order sampler (Karras et al. 2022, arXiv 2206.00364,
// Algorithm 1), following diffusers' HeunDiscreteScheduler
// (scheduling_heun_discrete.py).
//
// Two model evaluations per noise level: timesteps() holds 2n - 1 entries
// (the first, then every later one twice) and step() is called once per
// entry, alternating an Euler step and its Heun correction; the last entry
// is a plain Euler step to sigma = 0.

#include "sdgen/schedulers/sigma_scheduler.h"

namespace sdgen {

class HeunDiscreteScheduler : public SigmaScheduler {
 public:
  // Reads config.use_karras_sigmas, config.clip_sample(_range) and, from
  // config.raw, use_exponential_sigmas (use_beta_sigmas throws: not supported).
  explicit HeunDiscreteScheduler(SchedulerConfig config);

  std::string name() const override { return "heun"; }
  void set_timesteps(int num_inference_steps) override;
  // diffusers HeunDiscreteScheduler.step (deterministic, gamma = 0).
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;
  int order() const override { return 2; }

  // True when the next step() is an Euler (first-order) step.
  bool state_in_first_order() const { return !dt_.defined(); }

 private:
  bool use_exponential_sigmas_ = false;
  // State between the Euler step and its correction.
  torch::Tensor prev_derivative_;
  torch::Tensor dt_;
  torch::Tensor sample_;
};

}  // namespace sdgen
