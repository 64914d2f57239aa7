#include "sdgen/schedulers/dpm_solver_multistep.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <utility>

#include "sdgen/error.h"
#include "sigma_schedule.h"

namespace sdgen {

namespace {

using sigma_schedule::lambda_of;
using sigma_schedule::raw_value;

}  // namespace

SchedulerConfig DPMSolverMultistepScheduler::dpmpp_2m_config(SchedulerConfig config, bool karras) {
  if (!config.raw.is_object()) config.raw = nlohmann::json::object();
  config.raw["algorithm_type"] = "dpmsolver++";
  config.raw["solver_order"] = 2;
  config.raw["use_karras_sigmas"] = karras;
  config.use_karras_sigmas = karras;
  return config;
}

DPMSolverMultistepScheduler::DPMSolverMultistepScheduler(SchedulerConfig config)
    : MultistepScheduler(std::move(config)) {
  // diffusers DPMSolverMultistepScheduler.__init__.
  lambda_min_clipped_ = -std::numeric_limits<double>::infinity();
  solver_order_ = raw_value<int>(config_, "solver_order", 2);
  algorithm_type_ = raw_value<std::string>(config_, "algorithm_type", "dpmsolver++");
  solver_type_ = raw_value<std::string>(config_, "solver_type", "midpoint");
  lower_order_final_ = raw_value<bool>(config_, "lower_order_final", true);
  euler_at_final_ = raw_value<bool>(config_, "euler_at_final", false);
  use_lu_lambdas_ = raw_value<bool>(config_, "use_lu_lambdas", false);
  use_exponential_sigmas_ = raw_value<bool>(config_, "use_exponential_sigmas", false);
  final_sigmas_type_ = raw_value<std::string>(config_, "final_sigmas_type", "zero");
  lambda_min_clipped_ = raw_value<double>(config_, "lambda_min_clipped", lambda_min_clipped_);

  if (solver_order_ < 1 || solver_order_ > 3) {
    throw Error("dpm solver scheduler: solver_order must be 1, 2 or 3, found " +
                std::to_string(solver_order_));
  }
  check_sigma_options("dpm solver");
  // "deis" falls back to dpmsolver++, "logrho"/"bh1"/"bh2" to midpoint, as in diffusers.
  if (algorithm_type_ == "deis") algorithm_type_ = "dpmsolver++";
  if (algorithm_type_ != "dpmsolver" && algorithm_type_ != "dpmsolver++" &&
      algorithm_type_ != "sde-dpmsolver" && algorithm_type_ != "sde-dpmsolver++") {
    throw Error("dpm solver scheduler: algorithm_type '" + algorithm_type_ +
                "' is not supported (expected dpmsolver, dpmsolver++, sde-dpmsolver or "
                "sde-dpmsolver++)");
  }
  if (solver_type_ == "logrho" || solver_type_ == "bh1" || solver_type_ == "bh2") {
    solver_type_ = "midpoint";
  }
  if (solver_type_ != "midpoint" && solver_type_ != "heun") {
    throw Error("dpm solver scheduler: solver_type '" + solver_type_ +
                "' is not supported (expected midpoint or heun)");
  }
  if (algorithm_type_ == "sde-dpmsolver" && solver_order_ == 3) {
    throw Error("dpm solver scheduler: sde-dpmsolver has no third-order update (diffusers)");
  }
  check_final_sigmas_type("dpm solver");
  if (algorithm_type_ != "dpmsolver++" && algorithm_type_ != "sde-dpmsolver++" &&
      final_sigmas_type_ == "zero") {
    throw Error(
        "dpm solver scheduler: final_sigmas_type zero is not supported for algorithm_type " +
        algorithm_type_ + "; choose sigma_min");
  }
}

std::string DPMSolverMultistepScheduler::name() const {
  return config_.use_karras_sigmas ? "dpmpp_2m_karras" : "dpmpp_2m";
}

void DPMSolverMultistepScheduler::set_timesteps(int num_inference_steps) {
  // diffusers DPMSolverMultistepScheduler.set_timesteps(num_inference_steps).
  check_num_inference_steps(num_inference_steps);
  torch::NoGradGuard no_grad;
  const int64_t n_train = config_.num_train_timesteps;

  // "Clipping the minimum of all lambda(t) for numerical stability": the
  // number of flipped lambda_t below lambda_min_clipped (searchsorted, left).
  const torch::Tensor lambda_t =
      lambda_of(torch::sqrt(alphas_cumprod_tensor_), torch::sqrt(1 - alphas_cumprod_tensor_))
          .to(torch::kFloat64)
          .contiguous();
  int64_t clipped_idx = 0;
  for (int64_t i = 0; i < n_train; ++i) {
    if (lambda_t.data_ptr<double>()[i] < lambda_min_clipped_) ++clipped_idx;
  }
  const int64_t last_timestep = n_train - clipped_idx;
  if (last_timestep <= 0) {
    throw Error("dpm solver scheduler: lambda_min_clipped leaves no timesteps");
  }
  std::vector<double> timesteps =
      multistep_spaced_timesteps(config_, num_inference_steps, last_timestep);

  const std::vector<float> table = sigma_table();
  const std::vector<float> log_sigmas = sigma_schedule::log_sigmas(table);

  std::vector<double> sigmas;
  if (config_.use_karras_sigmas || use_exponential_sigmas_ || use_lu_lambdas_) {
    if (use_lu_lambdas_) {
      // diffusers _convert_to_lu (rho = 1) on the flipped log sigmas.
      const double lambda_min = log_sigmas.front();
      const double lambda_max = log_sigmas.back();
      sigmas = sigma_schedule::np_linspace(0.0, 1.0, num_inference_steps);
      for (double& s : sigmas) {
        volatile double scaled = s * (lambda_min - lambda_max);
        s = std::exp(lambda_max + scaled);
      }
    } else {
      sigmas = karras_or_exponential(table.front(), table.back(), num_inference_steps);
    }
    // Karras and Lu timesteps are rounded unless the schedule is cosine;
    // otherwise torch's .to(int64) truncates.
    timesteps =
        sigma_timesteps(sigmas, log_sigmas,
                        !use_exponential_sigmas_ && config_.beta_schedule != "squaredcos_cap_v2");
  } else {
    sigmas = table_sigmas(timesteps, table);
  }
  sigmas.push_back(final_sigmas_type_ == "sigma_min" ? static_cast<double>(table.front()) : 0.0);
  set_schedule(sigmas, std::move(timesteps));
}

torch::Tensor DPMSolverMultistepScheduler::convert_model_output(const torch::Tensor& model_output,
                                                                const torch::Tensor& sample) const {
  // diffusers DPMSolverMultistepScheduler.convert_model_output.
  const std::string& type = config_.prediction_type;
  const bool learned =
      config_.variance_type == "learned" || config_.variance_type == "learned_range";
  const auto [alpha_t, sigma_t] = alpha_sigma_at(step_index_);
  // diffusers keeps the first 3 channels of a learned-variance output.
  const torch::Tensor eps =
      type == "epsilon" && learned ? model_output.slice(1, 0, 3) : model_output;
  if (algorithm_type_ == "dpmsolver++" || algorithm_type_ == "sde-dpmsolver++") {
    return predicted_x0(model_output, eps, sample, alpha_t, sigma_t);
  }
  torch::Tensor epsilon = predicted_epsilon(model_output, eps, sample, alpha_t, sigma_t);
  if (config_.thresholding) {
    torch::Tensor x0_pred = (sample - sigma_t * epsilon) / alpha_t;
    x0_pred = threshold_sample(x0_pred);
    epsilon = (sample - alpha_t * x0_pred) / sigma_t;
  }
  return epsilon;
}

torch::Tensor DPMSolverMultistepScheduler::first_order_update(const torch::Tensor& model_output,
                                                              const torch::Tensor& sample,
                                                              const torch::Tensor& noise) const {
  // diffusers dpm_solver_first_order_update ("equivalent to DDIM").
  const auto [alpha_t, sigma_t] = alpha_sigma_at(step_index_ + 1);
  const auto [alpha_s, sigma_s] = alpha_sigma_at(step_index_);
  const torch::Tensor h = lambda_of(alpha_t, sigma_t) - lambda_of(alpha_s, sigma_s);
  if (algorithm_type_ == "dpmsolver++") {
    return (sigma_t / sigma_s) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * model_output;
  }
  if (algorithm_type_ == "dpmsolver") {
    return (alpha_t / alpha_s) * sample - (sigma_t * (torch::exp(h) - 1.0)) * model_output;
  }
  if (algorithm_type_ == "sde-dpmsolver++") {
    return (sigma_t / sigma_s * torch::exp(-h)) * sample +
           (alpha_t * (1 - torch::exp(-2.0 * h))) * model_output +
           sigma_t * torch::sqrt(1.0 - torch::exp(-2 * h)) * noise;
  }
  // sde-dpmsolver
  return (alpha_t / alpha_s) * sample - 2.0 * (sigma_t * (torch::exp(h) - 1.0)) * model_output +
         sigma_t * torch::sqrt(torch::exp(2 * h) - 1.0) * noise;
}

torch::Tensor DPMSolverMultistepScheduler::second_order_update(const torch::Tensor& sample,
                                                               const torch::Tensor& noise) const {
  // diffusers multistep_dpm_solver_second_order_update.
  const auto [alpha_t, sigma_t] = alpha_sigma_at(step_index_ + 1);
  const auto [alpha_s0, sigma_s0] = alpha_sigma_at(step_index_);
  const auto [alpha_s1, sigma_s1] = alpha_sigma_at(step_index_ - 1);
  const torch::Tensor lambda_t = lambda_of(alpha_t, sigma_t);
  const torch::Tensor lambda_s0 = lambda_of(alpha_s0, sigma_s0);
  const torch::Tensor lambda_s1 = lambda_of(alpha_s1, sigma_s1);
  const torch::Tensor& m0 = model_outputs_[model_outputs_.size() - 1];
  const torch::Tensor& m1 = model_outputs_[model_outputs_.size() - 2];
  const torch::Tensor h = lambda_t - lambda_s0;
  const torch::Tensor h_0 = lambda_s0 - lambda_s1;
  const torch::Tensor r0 = h_0 / h;
  const torch::Tensor& D0 = m0;
  const torch::Tensor D1 = r0.reciprocal() * (m0 - m1);
  const bool midpoint = solver_type_ == "midpoint";
  if (algorithm_type_ == "dpmsolver++") {
    // arXiv 2211.01095
    if (midpoint) {
      return (sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0 -
             0.5 * (alpha_t * (torch::exp(-h) - 1.0)) * D1;
    }
    return (sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0 +
           (alpha_t * ((torch::exp(-h) - 1.0) / h + 1.0)) * D1;
  }
  if (algorithm_type_ == "dpmsolver") {
    // arXiv 2206.00927
    if (midpoint) {
      return (alpha_t / alpha_s0) * sample - (sigma_t * (torch::exp(h) - 1.0)) * D0 -
             0.5 * (sigma_t * (torch::exp(h) - 1.0)) * D1;
    }
    return (alpha_t / alpha_s0) * sample - (sigma_t * (torch::exp(h) - 1.0)) * D0 -
           (sigma_t * ((torch::exp(h) - 1.0) / h - 1.0)) * D1;
  }
  if (algorithm_type_ == "sde-dpmsolver++") {
    if (midpoint) {
      return (sigma_t / sigma_s0 * torch::exp(-h)) * sample +
             (alpha_t * (1 - torch::exp(-2.0 * h))) * D0 +
             0.5 * (alpha_t * (1 - torch::exp(-2.0 * h))) * D1 +
             sigma_t * torch::sqrt(1.0 - torch::exp(-2 * h)) * noise;
    }
    return (sigma_t / sigma_s0 * torch::exp(-h)) * sample +
           (alpha_t * (1 - torch::exp(-2.0 * h))) * D0 +
           (alpha_t * ((1.0 - torch::exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1 +
           sigma_t * torch::sqrt(1.0 - torch::exp(-2 * h)) * noise;
  }
  // sde-dpmsolver
  if (midpoint) {
    return (alpha_t / alpha_s0) * sample - 2.0 * (sigma_t * (torch::exp(h) - 1.0)) * D0 -
           (sigma_t * (torch::exp(h) - 1.0)) * D1 +
           sigma_t * torch::sqrt(torch::exp(2 * h) - 1.0) * noise;
  }
  return (alpha_t / alpha_s0) * sample - 2.0 * (sigma_t * (torch::exp(h) - 1.0)) * D0 -
         2.0 * (sigma_t * ((torch::exp(h) - 1.0) / h - 1.0)) * D1 +
         sigma_t * torch::sqrt(torch::exp(2 * h) - 1.0) * noise;
}

torch::Tensor DPMSolverMultistepScheduler::third_order_update(const torch::Tensor& sample,
                                                              const torch::Tensor& noise) const {
  // diffusers multistep_dpm_solver_third_order_update (arXiv 2206.00927).
  const auto [alpha_t, sigma_t] = alpha_sigma_at(step_index_ + 1);
  const auto [alpha_s0, sigma_s0] = alpha_sigma_at(step_index_);
  const auto [alpha_s1, sigma_s1] = alpha_sigma_at(step_index_ - 1);
  const auto [alpha_s2, sigma_s2] = alpha_sigma_at(step_index_ - 2);
  const torch::Tensor lambda_t = lambda_of(alpha_t, sigma_t);
  const torch::Tensor lambda_s0 = lambda_of(alpha_s0, sigma_s0);
  const torch::Tensor lambda_s1 = lambda_of(alpha_s1, sigma_s1);
  const torch::Tensor lambda_s2 = lambda_of(alpha_s2, sigma_s2);
  const size_t n = model_outputs_.size();
  const torch::Tensor& m0 = model_outputs_[n - 1];
  const torch::Tensor& m1 = model_outputs_[n - 2];
  const torch::Tensor& m2 = model_outputs_[n - 3];
  const torch::Tensor h = lambda_t - lambda_s0;
  const torch::Tensor h_0 = lambda_s0 - lambda_s1;
  const torch::Tensor h_1 = lambda_s1 - lambda_s2;
  const torch::Tensor r0 = h_0 / h;
  const torch::Tensor r1 = h_1 / h;
  const torch::Tensor& D0 = m0;
  const torch::Tensor D1_0 = r0.reciprocal() * (m0 - m1);
  const torch::Tensor D1_1 = r1.reciprocal() * (m1 - m2);
  const torch::Tensor D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1);
  const torch::Tensor D2 = (r0 + r1).reciprocal() * (D1_0 - D1_1);
  if (algorithm_type_ == "dpmsolver++") {
    return (sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0 +
           (alpha_t * ((torch::exp(-h) - 1.0) / h + 1.0)) * D1 -
           (alpha_t * ((torch::exp(-h) - 1.0 + h) / h.pow(2) - 0.5)) * D2;
  }
  if (algorithm_type_ == "dpmsolver") {
    return (alpha_t / alpha_s0) * sample - (sigma_t * (torch::exp(h) - 1.0)) * D0 -
           (sigma_t * ((torch::exp(h) - 1.0) / h - 1.0)) * D1 -
           (sigma_t * ((torch::exp(h) - 1.0 - h) / h.pow(2) - 0.5)) * D2;
  }
  // sde-dpmsolver++
  return (sigma_t / sigma_s0 * torch::exp(-h)) * sample +
         (alpha_t * (1.0 - torch::exp(-2.0 * h))) * D0 +
         (alpha_t * ((1.0 - torch::exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * D1 +
         (alpha_t * ((1.0 - torch::exp(-2.0 * h) - 2.0 * h) / (2.0 * h).pow(2) - 0.5)) * D2 +
         sigma_t * torch::sqrt(1.0 - torch::exp(-2 * h)) * noise;
}

torch::Tensor DPMSolverMultistepScheduler::step(const torch::Tensor& model_output, double timestep,
                                                const torch::Tensor& sample, Generator& generator) {
  // diffusers DPMSolverMultistepScheduler.step.
  begin_step(timestep);
  torch::NoGradGuard no_grad;
  const int n = static_cast<int>(timesteps_.size());
  if (step_index_ >= n) {
    throw Error(name() + " scheduler: step() called more often than there are timesteps (" +
                std::to_string(n) + ")");
  }
  // "Improve numerical stability for small number of steps".
  const bool lower_order_final =
      step_index_ == n - 1 &&
      (euler_at_final_ || (lower_order_final_ && n < 15) || final_sigmas_type_ == "zero");
  const bool lower_order_second = step_index_ == n - 2 && lower_order_final_ && n < 15;

  const torch::Tensor converted = convert_model_output(model_output, sample);
  push_model_output(converted);

  // "Upcast to avoid precision issues when computing prev_sample".
  const torch::Tensor sample32 = sample.to(torch::kFloat32);
  torch::Tensor noise;
  if (algorithm_type_ == "sde-dpmsolver" || algorithm_type_ == "sde-dpmsolver++") {
    // randn_tensor with a CPU generator: drawn on the CPU, then moved.
    noise = generator.randn(converted.sizes(), torch::kFloat32).to(converted.device());
  }

  torch::Tensor prev_sample;
  if (solver_order_ == 1 || lower_order_nums_ < 1 || lower_order_final) {
    prev_sample = first_order_update(converted, sample32, noise);
  } else if (solver_order_ == 2 || lower_order_nums_ < 2 || lower_order_second) {
    prev_sample = second_order_update(sample32, noise);
  } else {
    prev_sample = third_order_update(sample32, noise);
  }
  if (lower_order_nums_ < solver_order_) ++lower_order_nums_;
  ++step_index_;
  return prev_sample.to(converted.scalar_type());
}

}  // namespace sdgen
