#pragma once

// DDPM (Ho et al. 2020, arXiv 2006.11239), following diffusers'
// DDPMScheduler (scheduling_ddpm.py).

#include <cstdint>
#include <vector>

#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

class DDPMScheduler : public Scheduler {
 public:
  // config.variance_type: fixed_small (default) | fixed_small_log |
  // fixed_large | fixed_large_log | learned | learned_range.
  explicit DDPMScheduler(SchedulerConfig config);

  std::string name() const override { return "ddpm"; }
  void set_timesteps(int num_inference_steps) override;
  // diffusers set_timesteps(timesteps=[...]): strictly descending, each
  // below num_train_timesteps.
  void set_custom_timesteps(const std::vector<int64_t>& timesteps);
  // diffusers DDPMScheduler.step. For t > 0 one noise tensor of the sample's
  // shape is drawn from `generator`. With a learned variance type the model
  // output may carry 2x the sample's channels (prediction, variance).
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;

  // The timestep after `timestep` in the schedule, -1 after the last one
  // (diffusers DDPMScheduler.previous_timestep).
  int64_t previous_timestep(int64_t timestep) const;

 private:
  // diffusers DDPMScheduler._get_variance for the scalar variance types:
  // returns the standard deviation to multiply the noise with.
  float noise_scale(int64_t t) const;

  bool custom_timesteps_ = false;
};

}  // namespace sdgen
