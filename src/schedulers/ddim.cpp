#include "sdgen/schedulers/ddim.h"

#include <cmath>
#include <utility>

#include "sdgen/error.h"

namespace sdgen {

DDIMScheduler::DDIMScheduler(SchedulerConfig config, double eta) : Scheduler(std::move(config)) {
  set_eta(eta);
  // "At every step in ddim, we are looking into the previous alphas_cumprod.
  // For the final step there is no previous alphas_cumprod": set_alpha_to_one
  // chooses 1, otherwise alphas_cumprod[0] (SD's configs: false).
  final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0f : alpha_prod(0);
}

void DDIMScheduler::set_eta(double eta) {
  if (!(eta >= 0.0) || !std::isfinite(eta)) {
    throw Error("ddim scheduler: eta must be >= 0, found " + std::to_string(eta));
  }
  eta_ = eta;
}

void DDIMScheduler::set_timesteps(int num_inference_steps) {
  // diffusers DDIMScheduler.set_timesteps.
  timesteps_ = spaced_timesteps(num_inference_steps);
  num_inference_steps_ = num_inference_steps;
}

float DDIMScheduler::variance(int64_t timestep, int64_t prev_timestep) const {
  // diffusers DDIMScheduler._get_variance, formula (16) of arXiv 2010.02502
  // without eta: (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev).
  const float alpha_prod_t = alpha_prod(timestep);
  const float alpha_prod_t_prev =
      prev_timestep >= 0 ? alpha_prod(prev_timestep) : final_alpha_cumprod_;
  const float beta_prod_t = 1.0f - alpha_prod_t;
  const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;
  return (beta_prod_t_prev / beta_prod_t) * (1.0f - alpha_prod_t / alpha_prod_t_prev);
}

torch::Tensor DDIMScheduler::step(const torch::Tensor& model_output, double timestep,
                                  const torch::Tensor& sample, Generator& generator) {
  // diffusers DDIMScheduler.step, formulas (12) and (16) of arXiv 2010.02502.
  check_ready();
  // 1. previous step value. diffusers uses num_train_timesteps // steps for
  // every timestep_spacing, so we do too.
  const int64_t t = train_timestep(timestep);
  const int64_t prev_t = t - config_.num_train_timesteps / num_inference_steps_;

  // 2. alphas, betas (float32 scalars, as diffusers' 0-dim float32 tensors).
  const float alpha_prod_t = alpha_prod(t);
  const float alpha_prod_t_prev = prev_t >= 0 ? alpha_prod(prev_t) : final_alpha_cumprod_;
  const float beta_prod_t = 1.0f - alpha_prod_t;

  // 3. predicted x_0 and noise; 4. clip or threshold x_0.
  torch::Tensor pred_epsilon = predict_epsilon(model_output, sample, alpha_prod_t);
  const torch::Tensor pred_original_sample =
      clip_or_threshold(predict_original(model_output, sample, alpha_prod_t));

  // 5. sigma_t(eta) = eta * sqrt(variance).
  const float std_dev_t = static_cast<float>(eta_) * std::sqrt(variance(t, prev_t));
  if (use_clipped_model_output_) {
    // "the pred_epsilon is always re-derived from the clipped x_0 in Glide"
    pred_epsilon =
        (sample - pred_original_sample * std::sqrt(alpha_prod_t)) / std::sqrt(beta_prod_t);
  }

  // 6. "direction pointing to x_t"; 7. x_{t-1} without the random noise.
  const float std_dev_t_sq = std_dev_t * std_dev_t;
  const float direction_coeff = std::sqrt(1.0f - alpha_prod_t_prev - std_dev_t_sq);
  const torch::Tensor pred_sample_direction = pred_epsilon * direction_coeff;
  torch::Tensor prev_sample =
      pred_original_sample * std::sqrt(alpha_prod_t_prev) + pred_sample_direction;

  if (eta_ > 0) {
    // diffusers randn_tensor(model_output.shape, generator, dtype): drawn on
    // the generator's device (CPU), then moved.
    const torch::Tensor variance_noise =
        generator.randn(model_output.sizes(), model_output.scalar_type()).to(model_output.device());
    prev_sample = prev_sample + variance_noise * std_dev_t;
  }
  return prev_sample;
}

}  // namespace sdgen
