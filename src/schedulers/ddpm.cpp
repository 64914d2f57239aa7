#include "sdgen/schedulers/ddpm.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "sdgen/error.h"

namespace sdgen {

DDPMScheduler::DDPMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
  const std::string& v = config_.variance_type;
  if (v != "fixed_small" && v != "fixed_small_log" && v != "fixed_large" &&
      v != "fixed_large_log" && v != "learned" && v != "learned_range") {
    throw Error("ddpm scheduler: variance_type '" + v +
                "' is not supported (expected fixed_small, fixed_small_log, fixed_large, "
                "fixed_large_log, learned or learned_range)");
  }
  // Before set_timesteps the chain is every training timestep, descending,
  // and the previous timestep is t - 1 (diffusers DDPMScheduler.__init__).
  timesteps_.reserve(static_cast<size_t>(config_.num_train_timesteps));
  for (int t = config_.num_train_timesteps - 1; t >= 0; --t) timesteps_.push_back(t);
}

void DDPMScheduler::set_timesteps(int num_inference_steps) {
  // diffusers DDPMScheduler.set_timesteps(num_inference_steps): the same
  // spacings as DDIM.
  timesteps_ = spaced_timesteps(num_inference_steps);
  num_inference_steps_ = num_inference_steps;
  custom_timesteps_ = false;
}

void DDPMScheduler::set_custom_timesteps(const std::vector<int64_t>& timesteps) {
  // diffusers DDPMScheduler.set_timesteps(timesteps=...).
  if (timesteps.empty()) throw Error("ddpm scheduler: custom timesteps are empty");
  for (size_t i = 1; i < timesteps.size(); ++i) {
    if (timesteps[i] >= timesteps[i - 1]) {
      throw Error("ddpm scheduler: custom timesteps must be in descending order, found " +
                  std::to_string(timesteps[i - 1]) + " then " + std::to_string(timesteps[i]));
    }
  }
  if (timesteps.front() >= config_.num_train_timesteps || timesteps.back() < 0) {
    throw Error("ddpm scheduler: custom timesteps must lie in [0, " +
                std::to_string(config_.num_train_timesteps) + "), found " +
                std::to_string(timesteps.front()) + " .. " + std::to_string(timesteps.back()));
  }
  timesteps_.assign(timesteps.begin(), timesteps.end());
  num_inference_steps_ = static_cast<int>(timesteps.size());
  custom_timesteps_ = true;
}

int64_t DDPMScheduler::previous_timestep(int64_t timestep) const {
  // diffusers DDPMScheduler.previous_timestep: the next entry of the
  // schedule (-1 after the last) once a schedule is set, else t - 1.
  if (!custom_timesteps_ && num_inference_steps_ == 0) return timestep - 1;
  const auto it = std::find(timesteps_.begin(), timesteps_.end(), static_cast<double>(timestep));
  if (it == timesteps_.end()) {
    throw Error("ddpm scheduler: timestep " + std::to_string(timestep) +
                " is not in the schedule set by set_timesteps");
  }
  return it + 1 == timesteps_.end() ? -1 : static_cast<int64_t>(*(it + 1));
}

float DDPMScheduler::noise_scale(int64_t t) const {
  // diffusers DDPMScheduler._get_variance (formulas (6), (7) of arXiv
  // 2006.11239) and how step() turns it into the noise's multiplier.
  const int64_t prev_t = previous_timestep(t);
  const float alpha_prod_t = alpha_prod(t);
  const float alpha_prod_t_prev = prev_t >= 0 ? alpha_prod(prev_t) : 1.0f;
  const float current_beta_t = 1.0f - alpha_prod_t / alpha_prod_t_prev;
  float variance = (1.0f - alpha_prod_t_prev) / (1.0f - alpha_prod_t) * current_beta_t;
  // "we always take the log of variance, so clamp it to ensure it's not 0"
  variance = std::max(variance, 1e-20f);
  const std::string& type = config_.variance_type;
  if (type == "fixed_small") return std::sqrt(variance);
  if (type == "fixed_small_log") return std::exp(0.5f * std::log(variance));  // rl-diffuser
  if (type == "fixed_large") return std::sqrt(current_beta_t);
  // fixed_large_log (GLIDE max_log) holds log(beta_t); diffusers then takes
  // its square root, a NaN. We use it as a log variance: exp(0.5 * log beta).
  return std::exp(0.5f * std::log(current_beta_t));
}

torch::Tensor DDPMScheduler::step(const torch::Tensor& model_output, double timestep,
                                  const torch::Tensor& sample, Generator& generator) {
  // diffusers DDPMScheduler.step.
  const int64_t t = train_timestep(timestep);
  const int64_t prev_t = previous_timestep(t);
  const std::string& type = config_.variance_type;
  const bool learned = type == "learned" || type == "learned_range";

  torch::Tensor output = model_output;
  torch::Tensor predicted_variance;
  if (learned && model_output.size(1) == sample.size(1) * 2) {
    auto parts = torch::split(model_output, sample.size(1), 1);
    output = parts[0];
    predicted_variance = parts[1];
  }

  // 1. alphas, betas (float32 scalars, as diffusers' 0-dim float32 tensors).
  const float alpha_prod_t = alpha_prod(t);
  const float alpha_prod_t_prev = prev_t >= 0 ? alpha_prod(prev_t) : 1.0f;
  const float beta_prod_t = 1.0f - alpha_prod_t;
  const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;
  const float current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
  const float current_beta_t = 1.0f - current_alpha_t;

  // 2. predicted x_0, formula (15) of arXiv 2006.11239; 3. clip or threshold.
  const torch::Tensor pred_original_sample =
      clip_or_threshold(predict_original(output, sample, alpha_prod_t));

  // 4., 5. posterior mean mu_t, formula (7).
  const float pred_original_sample_coeff =
      (std::sqrt(alpha_prod_t_prev) * current_beta_t) / beta_prod_t;
  const float current_sample_coeff = std::sqrt(current_alpha_t) * beta_prod_t_prev / beta_prod_t;
  torch::Tensor pred_prev_sample =
      pred_original_sample * pred_original_sample_coeff + sample * current_sample_coeff;

  // 6. add noise for every step but the last (t > 0).
  if (t > 0) {
    const torch::Tensor variance_noise =
        generator.randn(output.sizes(), output.scalar_type()).to(output.device());
    torch::Tensor variance;
    if (learned) {
      if (!predicted_variance.defined()) {
        throw Error("ddpm scheduler: variance_type '" + type + "' needs a model output with " +
                    std::to_string(sample.size(1) * 2) +
                    " channels (prediction, variance), found " +
                    std::to_string(model_output.size(1)));
      }
      if (type == "learned") {
        variance = predicted_variance.pow(0.5) * variance_noise;
      } else {
        // learned_range (improved DDPM, arXiv 2102.09672): interpolate the
        // log variance between beta_tilde_t and beta_t.
        const float alpha_t_over_prev = alpha_prod_t / alpha_prod_t_prev;
        const float beta_t = 1.0f - alpha_t_over_prev;
        const float posterior =
            std::max((1.0f - alpha_prod_t_prev) / (1.0f - alpha_prod_t) * beta_t, 1e-20f);
        const float min_log = std::log(posterior);
        const float max_log = std::log(beta_t);
        const torch::Tensor frac = (predicted_variance + 1) / 2;
        const torch::Tensor log_variance = frac * max_log + (1 - frac) * min_log;
        variance = torch::exp(0.5 * log_variance) * variance_noise;
      }
    } else {
      variance = variance_noise * noise_scale(t);
    }
    pred_prev_sample = pred_prev_sample + variance;
  }
  return pred_prev_sample;
}

}  // namespace sdgen
