#include "sdgen/schedulers/multistep.h"

#include <cmath>
#include <utility>

#include "sdgen/error.h"
#include "sigma_schedule.h"

namespace sdgen {

namespace ss = sigma_schedule;

std::vector<double> multistep_spaced_timesteps(const SchedulerConfig& config, int steps,
                                               int64_t last_timestep) {
  // diffusers DPMSolverMultistepScheduler.set_timesteps (and the copy in
  // UniPCMultistepScheduler.set_timesteps), Table 2 of arXiv 2305.08891 with
  // num_inference_steps + 1 points.
  const std::string& spacing = config.timestep_spacing;
  std::vector<double> timesteps;
  if (spacing == "linspace") {
    // np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
    const auto y = ss::np_linspace(0.0, static_cast<double>(last_timestep - 1), steps + 1);
    for (int i = steps; i >= 1; --i) timesteps.push_back(std::nearbyint(y[static_cast<size_t>(i)]));
  } else if (spacing == "leading") {
    // (np.arange(0, steps + 1) * (last // (steps + 1))).round()[::-1][:-1] + steps_offset
    const int64_t step_ratio = last_timestep / (steps + 1);
    for (int64_t i = steps; i >= 1; --i) {
      timesteps.push_back(static_cast<double>(i * step_ratio + config.steps_offset));
    }
  } else if (spacing == "trailing") {
    // np.arange(last, 0, -num_train / steps).round() - 1, with numpy's arange
    // arithmetic: ceil(-last / -ratio) values start + i * ((start - ratio) - start).
    const double step_ratio = static_cast<double>(config.num_train_timesteps) / steps;
    for (const double y : sigma_schedule::np_arange_down(last_timestep, step_ratio)) {
      const double value = std::nearbyint(y) - 1;
      // For some step counts (61, 103, ...) numpy's arange yields one value
      // more, rounding to timestep -1; like Scheduler::spaced_timesteps we
      // keep only valid timesteps.
      if (value >= 0) timesteps.push_back(value);
    }
  } else {
    throw Error("scheduler config: timestep_spacing '" + spacing +
                "' is not supported (expected leading, trailing or linspace)");
  }
  for (double t : timesteps) {
    if (t < 0 || t >= static_cast<double>(config.num_train_timesteps)) {
      throw Error("scheduler: timestep " + std::to_string(static_cast<int64_t>(t)) +
                  " from timestep_spacing '" + spacing + "' and steps_offset " +
                  std::to_string(config.steps_offset) + " is outside [0, " +
                  std::to_string(config.num_train_timesteps) + ")");
    }
  }
  return timesteps;
}

MultistepScheduler::MultistepScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
  if (config_.rescale_betas_zero_snr) {
    // "Close to 0 without being 0 so first sigma is not inf".
    alphas_cumprod_tensor_[-1] = std::pow(2.0, -24);
    alphas_cumprod_.back() = std::pow(2.0, -24);
  }
  for (int t = config_.num_train_timesteps - 1; t >= 0; --t) timesteps_.push_back(t);
  sigmas_tensor_ = train_sigmas();
}

void MultistepScheduler::check_sigma_options(const std::string& what) const {
  if (ss::raw_value<bool>(config_, "use_beta_sigmas", false) ||
      ss::raw_value<bool>(config_, "use_flow_sigmas", false)) {
    throw Error(what +
                " scheduler: use_beta_sigmas and use_flow_sigmas are not supported (config)");
  }
  if (config_.use_karras_sigmas && use_exponential_sigmas_) {
    throw Error(what +
                " scheduler: only one of use_karras_sigmas and use_exponential_sigmas can be used");
  }
}

void MultistepScheduler::check_final_sigmas_type(const std::string& what) const {
  if (final_sigmas_type_ != "zero" && final_sigmas_type_ != "sigma_min") {
    throw Error(what + " scheduler: final_sigmas_type '" + final_sigmas_type_ +
                "' is not supported (expected zero or sigma_min)");
  }
}

std::vector<float> MultistepScheduler::sigma_table() const {
  // sigmas = np.array(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5): float32.
  const torch::Tensor train = train_sigmas().contiguous();
  return std::vector<float>(train.data_ptr<float>(), train.data_ptr<float>() + train.numel());
}

std::vector<double> MultistepScheduler::table_sigmas(const std::vector<double>& timesteps,
                                                     const std::vector<float>& table) {
  std::vector<double> sigmas;
  for (double t : timesteps) sigmas.push_back(table.at(static_cast<size_t>(t)));
  return sigmas;
}

std::vector<double> MultistepScheduler::karras_or_exponential(double sigma_min, double sigma_max,
                                                              int steps) const {
  return config_.use_karras_sigmas ? ss::karras_sigmas(sigma_min, sigma_max, steps)
                                   : ss::exponential_sigmas(sigma_min, sigma_max, steps);
}

std::vector<double> MultistepScheduler::sigma_timesteps(const std::vector<double>& sigmas,
                                                        const std::vector<float>& log_sigmas,
                                                        bool round) {
  std::vector<double> timesteps;
  for (double s : sigmas) {
    const double t = ss::sigma_to_t(s, log_sigmas);
    timesteps.push_back(round ? std::nearbyint(t) : std::trunc(t));
  }
  return timesteps;
}

void MultistepScheduler::set_schedule(const std::vector<double>& sigmas,
                                      std::vector<double> timesteps) {
  // .astype(np.float32)
  sigmas_tensor_ = torch::tensor(sigmas, torch::kFloat64).to(torch::kFloat32);
  const torch::Tensor widened = sigmas_tensor_.to(torch::kFloat64).contiguous();
  sigmas_.assign(widened.data_ptr<double>(), widened.data_ptr<double>() + widened.numel());
  timesteps_ = std::move(timesteps);
  num_inference_steps_ = static_cast<int>(timesteps_.size());
  model_outputs_.assign(static_cast<size_t>(solver_order_), torch::Tensor());
  lower_order_nums_ = 0;
  step_index_ = -1;
  begin_index_ = -1;
}

std::pair<torch::Tensor, torch::Tensor> MultistepScheduler::alpha_sigma_at(int64_t index) const {
  return ss::alpha_sigma_t(sigmas_tensor_[index]);
}

torch::Tensor MultistepScheduler::predicted_x0(const torch::Tensor& model_output,
                                               const torch::Tensor& eps,
                                               const torch::Tensor& sample,
                                               const torch::Tensor& alpha_t,
                                               const torch::Tensor& sigma_t) const {
  // "DPM-Solver++ needs to solve an integral of the data prediction model."
  const std::string& type = config_.prediction_type;
  torch::Tensor x0_pred;
  if (type == "epsilon") {
    x0_pred = (sample - sigma_t * eps) / alpha_t;
  } else if (type == "sample") {
    x0_pred = model_output;
  } else {
    x0_pred = alpha_t * sample - sigma_t * model_output;
  }
  if (config_.thresholding) x0_pred = threshold_sample(x0_pred);
  return x0_pred;
}

torch::Tensor MultistepScheduler::predicted_epsilon(const torch::Tensor& model_output,
                                                    const torch::Tensor& eps,
                                                    const torch::Tensor& sample,
                                                    const torch::Tensor& alpha_t,
                                                    const torch::Tensor& sigma_t) const {
  // "DPM-Solver needs to solve an integral of the noise prediction model."
  const std::string& type = config_.prediction_type;
  if (type == "epsilon") return eps;
  if (type == "sample") return (sample - alpha_t * model_output) / sigma_t;
  return alpha_t * model_output + sigma_t * sample;
}

void MultistepScheduler::begin_step(double timestep) {
  check_ready();
  if (step_index_ < 0)
    step_index_ = begin_index_ >= 0 ? begin_index_ : index_for_timestep(timestep);
}

void MultistepScheduler::push_model_output(const torch::Tensor& converted) {
  for (int i = 0; i + 1 < solver_order_; ++i) {
    model_outputs_[static_cast<size_t>(i)] = model_outputs_[static_cast<size_t>(i + 1)];
  }
  model_outputs_.back() = converted;
}

torch::Tensor MultistepScheduler::add_noise(const torch::Tensor& original,
                                            const torch::Tensor& noise, double timestep) const {
  check_ready();
  int index;
  if (begin_index_ < 0) {
    index = index_for_timestep(timestep);
  } else {
    index = step_index_ >= 0 ? step_index_ : begin_index_;
  }
  const torch::Tensor sigma = sigmas_tensor_.to(original.scalar_type())[index];
  const auto [alpha_t, sigma_t] = ss::alpha_sigma_t(sigma);
  return alpha_t * original + sigma_t * noise.to(original.device());
}

}  // namespace sdgen
