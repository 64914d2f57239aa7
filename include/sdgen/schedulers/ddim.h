#pragma once

// DDIM (Song et al. 2020, arXiv 2010.02502), following diffusers'
// DDIMScheduler (scheduling_ddim.py).

#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

class DDIMScheduler : public Scheduler {
 public:
  // `eta` weighs the added noise: 0 is deterministic DDIM (diffusers'
  // pipeline default), 1 is DDPM-like.
  explicit DDIMScheduler(SchedulerConfig config, double eta = 0.0);

  std::string name() const override { return "ddim"; }
  void set_timesteps(int num_inference_steps) override;
  // diffusers DDIMScheduler.step with this scheduler's eta and
  // use_clipped_model_output; noise is drawn from `generator` only if eta > 0.
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;

  double eta() const { return eta_; }
  void set_eta(double eta);
  // Re-derive the noise from the clipped x_0 (GLIDE); diffusers' step argument.
  void set_use_clipped_model_output(bool use) { use_clipped_model_output_ = use; }
  // alphas_cumprod "before" t = 0: 1 with set_alpha_to_one, else alphas_cumprod[0].
  float final_alpha_cumprod() const { return final_alpha_cumprod_; }

 private:
  // diffusers DDIMScheduler._get_variance.
  float variance(int64_t timestep, int64_t prev_timestep) const;

  double eta_ = 0.0;
  bool use_clipped_model_output_ = false;
  float final_alpha_cumprod_ = 1.0f;
};

}  // namespace sdgen
