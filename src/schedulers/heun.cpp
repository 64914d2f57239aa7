#include "sdgen/schedulers/heun.h"

#include <utility>

#include "sdgen/error.h"
#include "sigma_schedule.h"

namespace sdgen {

namespace ss = sigma_schedule;

HeunDiscreteScheduler::HeunDiscreteScheduler(SchedulerConfig config)
    : SigmaScheduler(std::move(config), /*zero_snr_tweak=*/false) {
  // diffusers HeunDiscreteScheduler.__init__ (whose config has no sigma_min /
  // sigma_max, so the Karras range is always the interpolated schedule's).
  use_exponential_sigmas_ = ss::raw_bool(config_.raw, "use_exponential_sigmas", false);
  if (ss::raw_bool(config_.raw, "use_beta_sigmas", false)) {
    throw Error("heun scheduler: use_beta_sigmas is not supported (needs scipy's beta.ppf)");
  }
  if (config_.use_karras_sigmas && use_exponential_sigmas_) {
    throw Error(
        "heun scheduler: only one of use_karras_sigmas and use_exponential_sigmas can be used");
  }
  // diffusers calls set_timesteps(num_train_timesteps) here; until
  // set_timesteps is called we only keep the training sigmas (descending,
  // then 0) so that init_noise_sigma is defined.
  use_training_sigmas();
}

void HeunDiscreteScheduler::set_timesteps(int num_inference_steps) {
  // diffusers HeunDiscreteScheduler.set_timesteps(num_inference_steps).
  check_num_inference_steps(num_inference_steps);
  torch::NoGradGuard no_grad;
  std::vector<double> timesteps = k_diffusion_timesteps(num_inference_steps);
  std::vector<double> sigmas = interpolated_sigmas(timesteps);
  // Karras / exponential timesteps are float64 here, rounded to float32 below.
  convert_sigmas(sigmas, timesteps, num_inference_steps, use_exponential_sigmas_);
  sigmas.push_back(0.0);
  const torch::Tensor s = ss::to_float32_tensor(sigmas);
  // cat([timesteps[:1], timesteps[1:].repeat_interleave(2)]).to(float32)
  std::vector<double> repeated;
  for (size_t i = 0; i < timesteps.size(); ++i) {
    const auto t = static_cast<double>(static_cast<float>(timesteps[i]));
    repeated.push_back(t);
    if (i > 0) repeated.push_back(t);
  }
  // cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
  set_schedule(
      torch::cat({s.slice(0, 0, 1), s.slice(0, 1, -1).repeat_interleave(2), s.slice(0, -1)}),
      std::move(repeated), num_inference_steps);
  prev_derivative_ = torch::Tensor();
  dt_ = torch::Tensor();
  sample_ = torch::Tensor();
}

torch::Tensor HeunDiscreteScheduler::step(const torch::Tensor& model_output, double timestep,
                                          const torch::Tensor& sample, Generator& generator) {
  // diffusers HeunDiscreteScheduler.step.
  (void)generator;
  begin_step(timestep);
  const bool first_order = state_in_first_order();
  if (step_index_ >= static_cast<int>(timesteps_.size()) ||
      (first_order && step_index_ + 1 >= sigmas_t_.size(0)) ||
      (!first_order && (step_index_ < 1 || step_index_ >= sigmas_t_.size(0)))) {
    throw step_overrun();
  }
  torch::NoGradGuard no_grad;
  // Euler step: sigma_i -> sigma_{i+1}; correction: evaluated at sigma_{i+1}.
  const torch::Tensor sigma = first_order ? sigmas_t_[step_index_] : sigmas_t_[step_index_ - 1];
  const torch::Tensor sigma_next =
      first_order ? sigmas_t_[step_index_ + 1] : sigmas_t_[step_index_];
  // "currently only gamma=0 is supported": sigma_hat == sigma.
  const torch::Tensor& sigma_hat = sigma;

  // 1. predicted x_0 from the sigma-scaled prediction.
  torch::Tensor pred_original_sample;
  const torch::Tensor& sigma_input = first_order ? sigma_hat : sigma_next;
  const std::string& type = config_.prediction_type;
  if (type == "epsilon") {
    pred_original_sample = sample - sigma_input * model_output;
  } else if (type == "v_prediction") {
    pred_original_sample = model_output * (-sigma_input / (sigma_input.pow(2) + 1).pow(0.5)) +
                           (sample / (sigma_input.pow(2) + 1));
  } else {
    pred_original_sample = model_output;
  }
  if (config_.clip_sample) {
    pred_original_sample =
        pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
  }

  torch::Tensor derivative;
  torch::Tensor dt;
  torch::Tensor x = sample;
  if (first_order) {
    // 2. ODE derivative; 3. delta sigma; kept for the correction.
    derivative = (sample - pred_original_sample) / sigma_hat;
    dt = sigma_next - sigma_hat;
    prev_derivative_ = derivative;
    dt_ = dt;
    sample_ = sample;
  } else {
    // 2. Heun: average of the two derivatives, applied from the Euler step's
    // starting sample.
    derivative = (sample - pred_original_sample) / sigma_next;
    derivative = (prev_derivative_ + derivative) / 2;
    dt = dt_;
    x = sample_;
    prev_derivative_ = torch::Tensor();
    dt_ = torch::Tensor();
    sample_ = torch::Tensor();
  }
  torch::Tensor prev_sample = x + derivative * dt;
  ++step_index_;
  return prev_sample;
}

}  // namespace sdgen
