#include "sdgen/schedulers/euler.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "sdgen/error.h"
#include "sigma_schedule.h"

namespace sdgen {

namespace ss = sigma_schedule;

EulerDiscreteScheduler::EulerDiscreteScheduler(SchedulerConfig config)
    : SigmaScheduler(std::move(config), /*zero_snr_tweak=*/true) {
  // diffusers EulerDiscreteScheduler.__init__.
  const nlohmann::json& raw = config_.raw;
  interpolation_type_ = ss::raw_string(raw, "interpolation_type", "linear");
  timestep_type_ = ss::raw_string(raw, "timestep_type", "discrete");
  final_sigmas_type_ = ss::raw_string(raw, "final_sigmas_type", "zero");
  use_exponential_sigmas_ = ss::raw_bool(raw, "use_exponential_sigmas", false);
  sigma_min_ = ss::raw_number(raw, "sigma_min");
  sigma_max_ = ss::raw_number(raw, "sigma_max");
  if (ss::raw_bool(raw, "use_beta_sigmas", false)) {
    throw Error("euler scheduler: use_beta_sigmas is not supported (needs scipy's beta.ppf)");
  }
  if (config_.use_karras_sigmas && use_exponential_sigmas_) {
    throw Error(
        "euler scheduler: only one of use_karras_sigmas and use_exponential_sigmas can be used");
  }
  if (interpolation_type_ != "linear" && interpolation_type_ != "log_linear") {
    throw Error("euler scheduler: interpolation_type '" + interpolation_type_ +
                "' is not supported (expected linear or log_linear)");
  }
  if (timestep_type_ != "discrete" && timestep_type_ != "continuous") {
    throw Error("euler scheduler: timestep_type '" + timestep_type_ +
                "' is not supported (expected discrete or continuous)");
  }
  if (final_sigmas_type_ != "zero" && final_sigmas_type_ != "sigma_min") {
    throw Error("euler scheduler: final_sigmas_type '" + final_sigmas_type_ +
                "' is not supported (expected zero or sigma_min)");
  }

  torch::NoGradGuard no_grad;
  use_training_sigmas();
  const int64_t n = config_.num_train_timesteps;
  timesteps_.clear();
  if (timestep_type_ == "continuous" && config_.prediction_type == "v_prediction") {
    timesteps_ = ss::to_double_vector(train_sigmas_.flip(0).log() * 0.25);
  } else {
    for (int64_t t = n - 1; t >= 0; --t) timesteps_.push_back(static_cast<double>(t));
  }
}

void EulerDiscreteScheduler::set_churn(double s_churn, double s_tmin, double s_tmax,
                                       double s_noise) {
  if (!(s_churn >= 0) || !std::isfinite(s_churn)) {
    throw Error("euler scheduler: s_churn must be a finite number >= 0, found " +
                std::to_string(s_churn));
  }
  s_churn_ = s_churn;
  s_tmin_ = s_tmin;
  s_tmax_ = s_tmax;
  s_noise_ = s_noise;
}

void EulerDiscreteScheduler::set_timesteps(int num_inference_steps) {
  // diffusers EulerDiscreteScheduler.set_timesteps(num_inference_steps).
  check_num_inference_steps(num_inference_steps);
  torch::NoGradGuard no_grad;
  std::vector<double> timesteps = k_diffusion_timesteps(num_inference_steps);

  std::vector<double> sigmas;
  if (interpolation_type_ == "linear") {
    sigmas = interpolated_sigmas(timesteps);
  } else {
    // "log_linear": torch.linspace(log(sigmas[-1]), log(sigmas[0]), n + 1).exp()
    // in float32 (ascending, n + 1 values, exactly as diffusers has it).
    const std::vector<float> log_sigmas = ss::log_sigmas(ss::to_float_vector(train_sigmas_));
    const torch::Tensor ls = torch::linspace(log_sigmas.back(), log_sigmas.front(),
                                             num_inference_steps + 1, torch::kFloat32)
                                 .exp();
    sigmas = ss::to_double_vector(ls);
  }
  convert_sigmas(sigmas, timesteps, num_inference_steps, use_exponential_sigmas_, sigma_min_,
                 sigma_max_);

  double sigma_last = 0.0;
  if (final_sigmas_type_ == "sigma_min") {
    // ((1 - alphas_cumprod[0]) / alphas_cumprod[0]) ** 0.5, a float32 value.
    sigma_last = train_sigmas_[0].item<float>();
  }
  sigmas.push_back(sigma_last);
  torch::Tensor sigmas_t = ss::to_float32_tensor(sigmas);

  if (timestep_type_ == "continuous" && config_.prediction_type == "v_prediction") {
    // torch.Tensor([0.25 * sigma.log() for sigma in sigmas[:-1]]).
    timesteps = ss::to_double_vector(sigmas_t.slice(0, 0, -1).log() * 0.25);
  } else {
    // timesteps.astype(np.float32)
    for (double& t : timesteps) t = static_cast<double>(static_cast<float>(t));
  }
  set_schedule(std::move(sigmas_t), std::move(timesteps), num_inference_steps);
}

torch::Tensor EulerDiscreteScheduler::step(const torch::Tensor& model_output, double timestep,
                                           const torch::Tensor& sample, Generator& generator) {
  // diffusers EulerDiscreteScheduler.step (Algorithm 2 of arXiv 2206.00364).
  begin_step(timestep);
  if (step_index_ + 1 >= sigmas_t_.size(0)) throw step_overrun();
  torch::NoGradGuard no_grad;
  // "Upcast to avoid precision issues when computing prev_sample".
  torch::Tensor x = sample.to(torch::kFloat32);
  const torch::Tensor sigma = sigmas_t_[step_index_];
  const float sigma_value = sigma.item<float>();

  // gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax.
  double gamma = 0.0;
  if (static_cast<float>(s_tmin_) <= sigma_value && sigma_value <= static_cast<float>(s_tmax_)) {
    gamma = std::min(s_churn_ / static_cast<double>(sigmas_t_.size(0) - 1), std::sqrt(2.0) - 1);
  }
  const torch::Tensor sigma_hat = sigma * (gamma + 1);
  if (gamma > 0) {
    const torch::Tensor noise =
        generator.randn(model_output.sizes(), model_output.scalar_type()).to(model_output.device());
    const torch::Tensor eps = noise * s_noise_;
    x = x + eps * (sigma_hat.pow(2) - sigma.pow(2)).pow(0.5);
  }

  // 1. predicted x_0 from the sigma-scaled prediction.
  torch::Tensor pred_original_sample;
  const std::string& type = config_.prediction_type;
  if (type == "sample") {
    pred_original_sample = model_output;
  } else if (type == "epsilon") {
    pred_original_sample = x - sigma_hat * model_output;
  } else {
    // v_prediction: denoised = model_output * c_out + input * c_skip.
    pred_original_sample =
        model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (x / (sigma.pow(2) + 1));
  }

  // 2. ODE derivative and the Euler step to the next sigma.
  const torch::Tensor derivative = (x - pred_original_sample) / sigma_hat;
  const torch::Tensor dt = sigmas_t_[step_index_ + 1] - sigma_hat;
  torch::Tensor prev_sample = x + derivative * dt;
  prev_sample = prev_sample.to(model_output.scalar_type());
  ++step_index_;
  return prev_sample;
}

}  // namespace sdgen
