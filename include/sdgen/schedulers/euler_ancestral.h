#pragma once

// Euler ancestral sampler (k-diffusion's sample_euler_ancestral), following
// diffusers' EulerAncestralDiscreteScheduler
// (scheduling_euler_ancestral_discrete.py). A1111's "Euler a".

#include "sdgen/schedulers/sigma_scheduler.h"

namespace sdgen {

class EulerAncestralDiscreteScheduler : public SigmaScheduler {
 public:
  // diffusers' EulerAncestral has no Karras/exponential sigmas: the config's
  // use_karras_sigmas is ignored, as diffusers ignores it.
  explicit EulerAncestralDiscreteScheduler(SchedulerConfig config);

  std::string name() const override { return "euler_a"; }
  void set_timesteps(int num_inference_steps) override;
  // diffusers EulerAncestralDiscreteScheduler.step: one noise tensor of the
  // model output's shape is drawn from `generator` at every step (the last
  // one too, where it is scaled by sigma_up = 0). prediction_type "sample" is
  // not supported (diffusers raises too).
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;
};

}  // namespace sdgen
