#pragma once

// The diffusers scheduler contract: set_timesteps / scale_model_input / step.
// A scheduler knows nothing about models; randomness comes only from the
// Generator passed to step().
//
// Numerics follow diffusers: betas and alphas_cumprod are float32 torch
// tensors built with the same torch ops (linspace, pow, cumprod), and the
// per-step scalars are float32, so the latents of a step match diffusers' to
// float32 rounding.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sdgen/config.h"
#include "sdgen/rng.h"
#include "sdgen/settings.h"

namespace sdgen {

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config);
  virtual ~Scheduler() = default;

  // Canonical lower-case name, as accepted by make_scheduler ("ddim").
  virtual std::string name() const = 0;

  virtual void set_timesteps(int num_inference_steps) = 0;
  // The timesteps to call the model at, in order (after set_timesteps).
  const std::vector<double>& timesteps() const { return timesteps_; }
  // Noise levels of sigma-based (k-diffusion style) schedulers after
  // set_timesteps, with the trailing 0; empty for alpha-based ones (DDIM, DDPM).
  const std::vector<double>& sigmas() const { return sigmas_; }
  virtual double init_noise_sigma() const { return 1.0; }
  virtual torch::Tensor scale_model_input(const torch::Tensor& sample, double timestep) {
    (void)timestep;
    return sample;
  }
  // x_t -> x_{t-1}. `model_output` is the (guided) UNet prediction.
  virtual torch::Tensor step(const torch::Tensor& model_output, double timestep,
                             const torch::Tensor& sample, Generator& generator) = 0;
  // q(x_t | x_0) for img2img (diffusers' add_noise).
  virtual torch::Tensor add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                                  double timestep) const;
  // Model evaluations per entry of timesteps() (diffusers' `order`, used by
  // img2img to skip the first `t_start * order` timesteps).
  virtual int order() const { return 1; }
  // img2img starts at timesteps()[begin_index] (diffusers' set_begin_index);
  // only schedulers that track a step index need it.
  virtual void set_begin_index(int begin_index) { begin_index_ = begin_index; }

  const SchedulerConfig& config() const { return config_; }
  // float32 values (as diffusers holds them), widened to double.
  const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
  const std::vector<double>& betas() const { return betas_; }
  // The same as float32 CPU tensors [num_train_timesteps].
  const torch::Tensor& alphas_cumprod_tensor() const { return alphas_cumprod_tensor_; }
  const torch::Tensor& betas_tensor() const { return betas_tensor_; }
  int num_inference_steps() const { return num_inference_steps_; }

 protected:
  // Integer timesteps for `steps` following config.timestep_spacing and
  // steps_offset, descending (diffusers DDIMScheduler.set_timesteps).
  std::vector<double> spaced_timesteps(int steps) const;
  // model_output -> predicted x_0 for the configured prediction_type.
  torch::Tensor predict_original(const torch::Tensor& model_output, const torch::Tensor& sample,
                                 double alpha_prod_t) const;
  // model_output -> predicted noise for the configured prediction_type.
  torch::Tensor predict_epsilon(const torch::Tensor& model_output, const torch::Tensor& sample,
                                double alpha_prod_t) const;
  // Clip (clip_sample) or dynamically threshold (thresholding) a predicted x_0.
  torch::Tensor clip_or_threshold(const torch::Tensor& pred_original_sample) const;
  // diffusers DDPMScheduler._threshold_sample (Imagen dynamic thresholding).
  torch::Tensor threshold_sample(const torch::Tensor& sample) const;
  // `timestep` as an index into alphas_cumprod; throws Error when it is not
  // an integer in [0, num_train_timesteps).
  int64_t train_timestep(double timestep) const;
  // alphas_cumprod[t] as the float32 diffusers computes with.
  float alpha_prod(int64_t t) const;
  // ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 as a float32 tensor, in
  // training order (diffusers EulerDiscreteScheduler.__init__ before flip).
  torch::Tensor train_sigmas() const;
  // Position of `timestep` in timesteps_, the second one when it occurs twice
  // (diffusers EulerDiscreteScheduler.index_for_timestep).
  int index_for_timestep(double timestep) const;
  // Throws Error unless 0 < steps <= num_train_timesteps.
  void check_num_inference_steps(int steps) const;
  // Throws Error when set_timesteps was not called.
  void check_ready() const;

  SchedulerConfig config_;
  std::vector<double> betas_;
  std::vector<double> alphas_cumprod_;
  torch::Tensor betas_tensor_;           // float32 [num_train_timesteps]
  torch::Tensor alphas_cumprod_tensor_;  // float32 [num_train_timesteps]
  std::vector<double> timesteps_;
  std::vector<double> sigmas_;
  int num_inference_steps_ = 0;
  int begin_index_ = -1;  // -1: not set
  int step_index_ = -1;   // -1: not started
};

// diffusers betas_for_alpha_bar (GLIDE cosine, "squaredcos_cap_v2"): float32 [n].
torch::Tensor betas_for_alpha_bar(int num_diffusion_timesteps, double max_beta = 0.999);
// diffusers rescale_zero_terminal_snr (arXiv 2305.08891, Algorithm 1).
torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas);

// Names accepted by make_scheduler (lower-case canonical names): the sampler
// registry's (sdgen/settings.h).
std::vector<std::string> scheduler_names();
std::unique_ptr<Scheduler> make_scheduler(Sampler sampler, const SchedulerConfig& config);
// `name`: any name of the sampler registry, case-insensitive (sdgen, A1111 or
// diffusers class names); "DPMSolverMultistepScheduler" keeps the config's own
// solver settings. Throws Error listing the valid names if unknown.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const SchedulerConfig& config);

}  // namespace sdgen
