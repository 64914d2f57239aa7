#include "sdgen/schedulers/sigma_scheduler.h"

#include <cmath>
#include <utility>

#include "sigma_schedule.h"

namespace sdgen {

namespace ss = sigma_schedule;

SigmaScheduler::SigmaScheduler(SchedulerConfig config, bool zero_snr_tweak)
    : Scheduler(std::move(config)) {
  torch::NoGradGuard no_grad;
  torch::Tensor alphas_cumprod = alphas_cumprod_tensor_;
  if (zero_snr_tweak && config_.rescale_betas_zero_snr) {
    alphas_cumprod = alphas_cumprod.clone();
    alphas_cumprod[-1] = std::ldexp(1.0, -24);
  }
  train_sigmas_ = ((1 - alphas_cumprod) / alphas_cumprod).pow(0.5);
}

void SigmaScheduler::use_training_sigmas() {
  torch::NoGradGuard no_grad;
  sigmas_t_ = torch::cat({train_sigmas_.flip(0), torch::zeros({1}, torch::kFloat32)});
  sigmas_ = ss::to_double_vector(sigmas_t_);
}

std::vector<double> SigmaScheduler::k_diffusion_timesteps(int steps) const {
  if (config_.timestep_spacing == "trailing") return spaced_timesteps(steps);
  return ss::k_timesteps(config_.timestep_spacing, config_.num_train_timesteps, steps,
                         config_.steps_offset);
}

std::vector<double> SigmaScheduler::interpolated_sigmas(
    const std::vector<double>& timesteps) const {
  return ss::interp_sigmas(timesteps, ss::to_float_vector(train_sigmas_));
}

void SigmaScheduler::convert_sigmas(std::vector<double>& sigmas, std::vector<double>& timesteps,
                                    int steps, bool exponential, std::optional<double> sigma_min,
                                    std::optional<double> sigma_max) const {
  if (!config_.use_karras_sigmas && !exponential) return;
  // diffusers _convert_to_karras / _convert_to_exponential, then _sigma_to_t.
  const double lo = sigma_min ? *sigma_min : sigmas.back();
  const double hi = sigma_max ? *sigma_max : sigmas.front();
  sigmas = config_.use_karras_sigmas ? ss::karras_sigmas(lo, hi, steps)
                                     : ss::exponential_sigmas(lo, hi, steps);
  const std::vector<float> log_sigmas = ss::log_sigmas(ss::to_float_vector(train_sigmas_));
  timesteps.clear();
  for (double s : sigmas) timesteps.push_back(ss::sigma_to_t(s, log_sigmas));
}

void SigmaScheduler::set_schedule(torch::Tensor sigmas, std::vector<double> timesteps,
                                  int num_inference_steps) {
  sigmas_t_ = std::move(sigmas);
  sigmas_ = ss::to_double_vector(sigmas_t_);
  timesteps_ = std::move(timesteps);
  num_inference_steps_ = num_inference_steps;
  step_index_ = -1;
  begin_index_ = -1;
}

double SigmaScheduler::init_noise_sigma() const {
  if (!sigmas_t_.defined()) return 1.0;
  return ss::init_noise_sigma(sigmas_t_, config_.timestep_spacing);
}

void SigmaScheduler::begin_step(double timestep) {
  check_ready();
  // diffusers EulerDiscreteScheduler._init_step_index.
  if (step_index_ < 0) step_index_ = begin_index_ < 0 ? index_for_timestep(timestep) : begin_index_;
}

Error SigmaScheduler::step_overrun() const {
  return Error(name() + " scheduler: step() called more often than the " +
               std::to_string(timesteps_.size()) + " timesteps of the schedule");
}

torch::Tensor SigmaScheduler::scale_model_input(const torch::Tensor& sample, double timestep) {
  // diffusers EulerDiscreteScheduler.scale_model_input (and its copies).
  begin_step(timestep);
  if (step_index_ >= sigmas_t_.size(0)) {
    throw Error(name() + " scheduler: scale_model_input called after the last step");
  }
  return ss::scale_by_sigma(sample, sigmas_t_[step_index_]);
}

int SigmaScheduler::noise_index(double timestep) const {
  if (begin_index_ < 0) return index_for_timestep(timestep);
  if (step_index_ >= 0) return step_index_;
  return begin_index_;
}

torch::Tensor SigmaScheduler::add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                                        double timestep) const {
  // diffusers EulerDiscreteScheduler.add_noise (and its copies).
  if (!sigmas_t_.defined()) check_ready();
  return ss::add_noise_at(original, noise, sigmas_t_, noise_index(timestep));
}

}  // namespace sdgen
