#pragma once

// Linear multistep (k-diffusion's sample_lms, Karras et al. 2022 sigmas),
// following diffusers' LMSDiscreteScheduler (scheduling_lms_discrete.py).

#include <vector>

#include <torch/torch.h>

#include "sdgen/schedulers/sigma_scheduler.h"

namespace sdgen {

class LMSDiscreteScheduler : public SigmaScheduler {
 public:
  // Reads config.use_karras_sigmas and the raw keys use_exponential_sigmas /
  // use_beta_sigmas (beta sigmas are not supported: they need scipy's beta
  // ppf). `lms_order` is diffusers' step(order=4) argument.
  explicit LMSDiscreteScheduler(SchedulerConfig config, int lms_order = 4);

  std::string name() const override { return "lms"; }
  // diffusers LMSDiscreteScheduler.set_timesteps: float timesteps, float32
  // sigmas interpolated from the training sigmas, with a trailing 0.
  void set_timesteps(int num_inference_steps) override;
  // diffusers LMSDiscreteScheduler.step (deterministic; `generator` unused).
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;

  int lms_order() const { return lms_order_; }
  // diffusers get_lms_coefficient: the integral over [sigma_t, sigma_{t+1}]
  // of the Lagrange basis polynomial `current_order` through the last
  // `order` sigmas, computed as scipy's quad does (21-point Gauss-Kronrod,
  // integrand in float32 like the torch tensors diffusers evaluates).
  double lms_coefficient(int order, int t, int current_order) const;

 private:
  int lms_order_ = 4;
  bool use_exponential_sigmas_ = false;
  std::vector<torch::Tensor> derivatives_;
};

}  // namespace sdgen
