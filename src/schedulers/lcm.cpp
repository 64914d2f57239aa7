#include "sdgen/schedulers/lcm.h"

#include <cmath>
#include <utility>
#include <vector>

#include "sdgen/error.h"

namespace sdgen {

LCMScheduler::LCMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
  const auto& raw = config_.raw;
  if (raw.is_object()) {
    if (raw.contains("original_inference_steps") && !raw["original_inference_steps"].is_null()) {
      original_inference_steps_ = raw["original_inference_steps"].get<int>();
    }
    if (raw.contains("timestep_scaling") && !raw["timestep_scaling"].is_null()) {
      timestep_scaling_ = raw["timestep_scaling"].get<double>();
    }
  }
  if (original_inference_steps_ <= 0) {
    throw Error("lcm scheduler: original_inference_steps must be > 0, found " +
                std::to_string(original_inference_steps_));
  }
  // diffusers LCMScheduler.__init__. Only custom schedules reaching below
  // t = 0 would use it; set_timesteps never does.
  final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0f : alpha_prod(0);
}

void LCMScheduler::set_timesteps(int num_inference_steps) {
  // diffusers LCMScheduler.set_timesteps(num_inference_steps, strength=1.0).
  check_num_inference_steps(num_inference_steps);
  const int original_steps = original_inference_steps_;
  const int n_train = config_.num_train_timesteps;
  if (original_steps > n_train) {
    throw Error("lcm scheduler: original_inference_steps " + std::to_string(original_steps) +
                " cannot be larger than num_train_timesteps " + std::to_string(n_train));
  }
  // LCM training/distillation timestep schedule: k * i - 1 for i = 1..original_steps.
  const int64_t k = n_train / original_steps;
  std::vector<int64_t> origin;
  for (int64_t i = 1; i <= original_steps; ++i) origin.push_back(i * k - 1);
  const auto len = static_cast<int64_t>(origin.size());
  if (len / num_inference_steps < 1 || num_inference_steps > original_steps) {
    throw Error("lcm scheduler: num_inference_steps " + std::to_string(num_inference_steps) +
                " cannot be larger than original_inference_steps " +
                std::to_string(original_steps));
  }
  // lcm_origin_timesteps[::-1][floor(np.linspace(0, len, n, endpoint=False))]
  const double step = static_cast<double>(len) / num_inference_steps;
  timesteps_.clear();
  for (int i = 0; i < num_inference_steps; ++i) {
    const auto index = static_cast<int64_t>(std::floor(static_cast<double>(i) * step));
    timesteps_.push_back(static_cast<double>(origin[static_cast<size_t>(len - 1 - index)]));
  }
  num_inference_steps_ = num_inference_steps;
  step_index_ = -1;
  begin_index_ = -1;
}

torch::Tensor LCMScheduler::step(const torch::Tensor& model_output, double timestep,
                                 const torch::Tensor& sample, Generator& generator) {
  // diffusers LCMScheduler.step.
  check_ready();
  const int64_t t = train_timestep(timestep);
  if (step_index_ < 0) step_index_ = begin_index_ < 0 ? index_for_timestep(timestep) : begin_index_;

  // 1. get previous step value
  const size_t prev_step_index = static_cast<size_t>(step_index_) + 1;
  const int64_t prev_t =
      prev_step_index < timesteps_.size() ? static_cast<int64_t>(timesteps_[prev_step_index]) : t;

  // 2. compute alphas, betas (float32 0-dim tensors in diffusers)
  const float alpha_prod_t = alpha_prod(t);
  const float alpha_prod_t_prev = prev_t >= 0 ? alpha_prod(prev_t) : final_alpha_cumprod_;
  const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;

  // 3. get_scalings_for_boundary_condition_discrete: the int64 timestep
  // tensor times timestep_scaling is a float32 tensor; sigma_data = 0.5.
  // c_skip = 0.25 / (s^2 + 0.25) is evaluated by torch as reciprocal() * 0.25.
  const float scaled_timestep = static_cast<float>(t) * static_cast<float>(timestep_scaling_);
  const float denom = scaled_timestep * scaled_timestep + 0.25f;
  const float c_skip = (1.0f / denom) * 0.25f;
  const float c_out = scaled_timestep / std::sqrt(denom);

  // 4. predicted original sample (epsilon, sample or v_prediction)
  torch::Tensor predicted_original_sample = predict_original(model_output, sample, alpha_prod_t);
  // 5. clip or threshold "predicted x_0"
  predicted_original_sample = clip_or_threshold(predicted_original_sample);

  // 6. denoise model output using boundary conditions
  denoised_ = predicted_original_sample * c_out + sample * c_skip;

  // 7. sample and inject noise z ~ N(0, I) for multistep inference ("noise
  // is not used on the final timestep of the timestep schedule").
  torch::Tensor prev_sample;
  if (step_index_ != num_inference_steps_ - 1) {
    const torch::Tensor noise =
        generator.randn(model_output.sizes(), denoised_.scalar_type()).to(model_output.device());
    prev_sample = denoised_ * std::sqrt(alpha_prod_t_prev) + noise * std::sqrt(beta_prod_t_prev);
  } else {
    prev_sample = denoised_;
  }
  ++step_index_;
  return prev_sample;
}

}  // namespace sdgen
