#pragma once

// The noise-level bookkeeping the k-diffusion samplers share (Euler, Euler
// ancestral, Heun, LMS), as diffusers' EulerDiscreteScheduler family holds
// it: float32 sigmas with a trailing 0 built from the training sigmas
// (np.interp, optionally Karras or exponential), a step index that starts at
// the begin index or at the timestep's position, the model input scaled by
// 1 / sqrt(sigma^2 + 1), and noise added as original + noise * sigma.
// Each sampler builds its schedule in set_timesteps and takes its step.

#include <optional>
#include <vector>

#include <torch/torch.h>

#include "sdgen/error.h"
#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

class SigmaScheduler : public Scheduler {
 public:
  // diffusers init_noise_sigma: max sigma ("linspace", "trailing") or
  // sqrt(max sigma^2 + 1) ("leading"), in float32; 1 before a schedule exists.
  double init_noise_sigma() const override;
  // sample / sqrt(sigma^2 + 1) (diffusers EulerDiscreteScheduler.scale_model_input).
  torch::Tensor scale_model_input(const torch::Tensor& sample, double timestep) override;
  // original + noise * sigma (diffusers EulerDiscreteScheduler.add_noise).
  torch::Tensor add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                          double timestep) const override;

  // Index of the next step into sigmas(), -1 before the first step.
  int step_index() const { return step_index_; }
  // sigmas() as the float32 CPU tensor diffusers steps with.
  const torch::Tensor& sigmas_tensor() const { return sigmas_t_; }

 protected:
  // `zero_snr_tweak`: with config.rescale_betas_zero_snr, the last
  // alphas_cumprod becomes 2**-24 ("close to 0 without being 0 so first sigma
  // is not inf"), as the __init__ of diffusers' Euler and Euler ancestral do.
  SigmaScheduler(SchedulerConfig config, bool zero_snr_tweak);

  // Before set_timesteps: every training sigma, descending, then 0.
  void use_training_sigmas();
  // The timesteps of diffusers' k-diffusion set_timesteps: "trailing" as
  // Scheduler::spaced_timesteps, "linspace" and "leading" as
  // sigma_schedule::k_timesteps (float64 values, rounded by the caller).
  std::vector<double> k_diffusion_timesteps(int steps) const;
  // np.interp(timesteps, arange(N), training sigmas) in float64.
  std::vector<double> interpolated_sigmas(const std::vector<double>& timesteps) const;
  // diffusers _convert_to_karras (config.use_karras_sigmas) or
  // _convert_to_exponential (`exponential`) between sigma_min and sigma_max
  // (unset: the ends of `sigmas`), then `timesteps` = _sigma_to_t of each
  // (float64). Neither asked: leaves both as they are.
  void convert_sigmas(std::vector<double>& sigmas, std::vector<double>& timesteps, int steps,
                      bool exponential, std::optional<double> sigma_min = {},
                      std::optional<double> sigma_max = {}) const;
  // The end of set_timesteps: the float32 schedule, step state reset.
  void set_schedule(torch::Tensor sigmas, std::vector<double> timesteps, int num_inference_steps);
  // The start of scale_model_input and step: set_timesteps was called, and
  // the step index is set (diffusers _init_step_index).
  void begin_step(double timestep);
  // "<name> scheduler: step() called more often than the N timesteps of the schedule".
  Error step_overrun() const;

  torch::Tensor train_sigmas_;  // float32 ((1 - a) / a) ** 0.5, training order
  torch::Tensor sigmas_t_;      // float32, trailing 0; undefined until there is a schedule

 private:
  // add_noise's step_indices: by timestep when no begin index is set
  // (training, or a pipeline without set_begin_index), the current step
  // after the first step (inpainting), else the begin index (img2img).
  int noise_index(double timestep) const;
};

}  // namespace sdgen
