#include "sdgen/schedulers/unipc_multistep.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "sdgen/error.h"
#include "sigma_schedule.h"

namespace sdgen {

namespace {

using sigma_schedule::lambda_of;
using sigma_schedule::raw_value;

}  // namespace

UniPCMultistepScheduler::UniPCMultistepScheduler(SchedulerConfig config)
    : MultistepScheduler(std::move(config)) {
  // diffusers UniPCMultistepScheduler.__init__.
  solver_order_ = raw_value<int>(config_, "solver_order", 2);
  predict_x0_ = raw_value<bool>(config_, "predict_x0", true);
  solver_type_ = raw_value<std::string>(config_, "solver_type", "bh2");
  lower_order_final_ = raw_value<bool>(config_, "lower_order_final", true);
  disable_corrector_ = raw_value<std::vector<int>>(config_, "disable_corrector", {});
  final_sigmas_type_ = raw_value<std::string>(config_, "final_sigmas_type", "zero");
  use_exponential_sigmas_ = raw_value<bool>(config_, "use_exponential_sigmas", false);
  sigma_min_ = raw_value<double>(config_, "sigma_min", -1.0);
  sigma_max_ = raw_value<double>(config_, "sigma_max", -1.0);

  if (solver_order_ < 1) {
    throw Error("unipc scheduler: solver_order must be >= 1, found " +
                std::to_string(solver_order_));
  }
  check_sigma_options("unipc");
  // "midpoint"/"heun"/"logrho" fall back to bh2, as in diffusers.
  if (solver_type_ == "midpoint" || solver_type_ == "heun" || solver_type_ == "logrho") {
    solver_type_ = "bh2";
  }
  if (solver_type_ != "bh1" && solver_type_ != "bh2") {
    throw Error("unipc scheduler: solver_type '" + solver_type_ +
                "' is not supported (expected bh1 or bh2)");
  }
  check_final_sigmas_type("unipc");
}

void UniPCMultistepScheduler::set_timesteps(int num_inference_steps) {
  // diffusers UniPCMultistepScheduler.set_timesteps(num_inference_steps).
  check_num_inference_steps(num_inference_steps);
  torch::NoGradGuard no_grad;
  const int64_t n_train = config_.num_train_timesteps;
  std::vector<double> timesteps = multistep_spaced_timesteps(config_, num_inference_steps, n_train);

  const std::vector<float> table = sigma_table();

  std::vector<double> sigmas;
  double sigma_last = 0.0;
  if (config_.use_karras_sigmas || use_exponential_sigmas_) {
    // _convert_to_karras / _convert_to_exponential read config.sigma_min and
    // sigma_max, else the table's ends.
    const double sigma_min = sigma_min_ >= 0 ? sigma_min_ : static_cast<double>(table.front());
    const double sigma_max = sigma_max_ >= 0 ? sigma_max_ : static_cast<double>(table.back());
    sigmas = karras_or_exponential(sigma_min, sigma_max, num_inference_steps);
    // Karras timesteps are rounded; exponential ones truncated by .to(int64).
    timesteps =
        sigma_timesteps(sigmas, sigma_schedule::log_sigmas(table), config_.use_karras_sigmas);
    if (final_sigmas_type_ == "sigma_min") sigma_last = sigmas.back();
  } else {
    sigmas = table_sigmas(timesteps, table);
    if (final_sigmas_type_ == "sigma_min") sigma_last = table.front();
  }
  sigmas.push_back(sigma_last);
  set_schedule(sigmas, std::move(timesteps));
  last_sample_ = torch::Tensor();
  this_order_ = 0;
}

torch::Tensor UniPCMultistepScheduler::convert_model_output(const torch::Tensor& model_output,
                                                            const torch::Tensor& sample) const {
  // diffusers UniPCMultistepScheduler.convert_model_output.
  const auto [alpha_t, sigma_t] = alpha_sigma_at(step_index_);
  if (predict_x0_) return predicted_x0(model_output, model_output, sample, alpha_t, sigma_t);
  return predicted_epsilon(model_output, model_output, sample, alpha_t, sigma_t);
}

torch::Tensor UniPCMultistepScheduler::uni_p_update(const torch::Tensor& sample, int order) const {
  // diffusers multistep_uni_p_bh_update (UniP, B(h) version). The scalar
  // coefficients are float32 0-dim tensors on the CPU.
  const size_t n = model_outputs_.size();
  const torch::Tensor& m0 = model_outputs_[n - 1];
  const torch::Tensor& x = sample;
  const auto [alpha_t, sigma_t] = alpha_sigma_at(step_index_ + 1);
  const auto [alpha_s0, sigma_s0] = alpha_sigma_at(step_index_);
  const torch::Tensor lambda_s0 = lambda_of(alpha_s0, sigma_s0);
  const torch::Tensor h = lambda_of(alpha_t, sigma_t) - lambda_s0;

  std::vector<torch::Tensor> rks;
  std::vector<torch::Tensor> D1s;
  for (int i = 1; i < order; ++i) {
    const int si = step_index_ - i;
    const torch::Tensor& mi = model_outputs_[n - static_cast<size_t>(i + 1)];
    const auto [alpha_si, sigma_si] = alpha_sigma_at(si);
    const torch::Tensor rk = (lambda_of(alpha_si, sigma_si) - lambda_s0) / h;
    rks.push_back(rk);
    D1s.push_back((mi - m0) / rk);
  }
  rks.push_back(torch::ones({}, torch::kFloat32));
  const torch::Tensor rks_t = torch::stack(rks);

  const torch::Tensor hh = predict_x0_ ? -h : h;
  const torch::Tensor h_phi_1 = torch::expm1(hh);  // h phi_1(h) = e^h - 1
  torch::Tensor h_phi_k = h_phi_1 / hh - 1;
  int64_t factorial_i = 1;
  const torch::Tensor B_h = solver_type_ == "bh1" ? hh : torch::expm1(hh);
  std::vector<torch::Tensor> R;
  std::vector<torch::Tensor> b;
  for (int i = 1; i <= order; ++i) {
    R.push_back(torch::pow(rks_t, i - 1));
    b.push_back(h_phi_k * factorial_i / B_h);
    factorial_i *= i + 1;
    h_phi_k = h_phi_k / hh - 1.0 / static_cast<double>(factorial_i);
  }
  const torch::Tensor R_t = torch::stack(R);
  const torch::Tensor b_t = torch::stack(b);

  torch::Tensor D1s_t;
  torch::Tensor rhos_p;
  if (!D1s.empty()) {
    D1s_t = torch::stack(D1s, 1);  // (B, K, ...)
    if (order == 2) {
      // "for order 2, we use a simplified version"
      rhos_p = torch::ones({1}, torch::TensorOptions().dtype(x.scalar_type())) * 0.5;
    } else {
      const int64_t k = R_t.size(0) - 1;
      rhos_p = at::linalg_solve(R_t.slice(0, 0, k).slice(1, 0, k), b_t.slice(0, 0, k))
                   .to(x.scalar_type());
    }
    rhos_p = rhos_p.to(x.device());
  }

  torch::Tensor x_t;
  if (predict_x0_) {
    const torch::Tensor x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0;
    if (D1s_t.defined()) {
      x_t = x_t_ - alpha_t * B_h * torch::einsum("k,bkc...->bc...", {rhos_p, D1s_t});
    } else {
      x_t = x_t_ - alpha_t * B_h * 0;
    }
  } else {
    const torch::Tensor x_t_ = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0;
    if (D1s_t.defined()) {
      x_t = x_t_ - sigma_t * B_h * torch::einsum("k,bkc...->bc...", {rhos_p, D1s_t});
    } else {
      x_t = x_t_ - sigma_t * B_h * 0;
    }
  }
  return x_t.to(x.scalar_type());
}

torch::Tensor UniPCMultistepScheduler::uni_c_update(const torch::Tensor& this_model_output,
                                                    const torch::Tensor& last_sample,
                                                    int order) const {
  // diffusers multistep_uni_c_bh_update (UniC, B(h) version): model_outputs_
  // still ends with the previous step's converted output.
  const size_t n = model_outputs_.size();
  const torch::Tensor& m0 = model_outputs_[n - 1];
  const torch::Tensor& x = last_sample;
  const torch::Tensor& model_t = this_model_output;
  const auto [alpha_t, sigma_t] = alpha_sigma_at(step_index_);
  const auto [alpha_s0, sigma_s0] = alpha_sigma_at(step_index_ - 1);
  const torch::Tensor lambda_s0 = lambda_of(alpha_s0, sigma_s0);
  const torch::Tensor h = lambda_of(alpha_t, sigma_t) - lambda_s0;

  std::vector<torch::Tensor> rks;
  std::vector<torch::Tensor> D1s;
  for (int i = 1; i < order; ++i) {
    const int si = step_index_ - (i + 1);
    const torch::Tensor& mi = model_outputs_[n - static_cast<size_t>(i + 1)];
    const auto [alpha_si, sigma_si] = alpha_sigma_at(si);
    const torch::Tensor rk = (lambda_of(alpha_si, sigma_si) - lambda_s0) / h;
    rks.push_back(rk);
    D1s.push_back((mi - m0) / rk);
  }
  rks.push_back(torch::ones({}, torch::kFloat32));
  const torch::Tensor rks_t = torch::stack(rks);

  const torch::Tensor hh = predict_x0_ ? -h : h;
  const torch::Tensor h_phi_1 = torch::expm1(hh);
  torch::Tensor h_phi_k = h_phi_1 / hh - 1;
  int64_t factorial_i = 1;
  const torch::Tensor B_h = solver_type_ == "bh1" ? hh : torch::expm1(hh);
  std::vector<torch::Tensor> R;
  std::vector<torch::Tensor> b;
  for (int i = 1; i <= order; ++i) {
    R.push_back(torch::pow(rks_t, i - 1));
    b.push_back(h_phi_k * factorial_i / B_h);
    factorial_i *= i + 1;
    h_phi_k = h_phi_k / hh - 1.0 / static_cast<double>(factorial_i);
  }
  const torch::Tensor R_t = torch::stack(R);
  const torch::Tensor b_t = torch::stack(b);

  torch::Tensor D1s_t;
  if (!D1s.empty()) D1s_t = torch::stack(D1s, 1);
  torch::Tensor rhos_c;
  if (order == 1) {
    // "for order 1, we use a simplified version"
    rhos_c = torch::ones({1}, torch::TensorOptions().dtype(x.scalar_type())) * 0.5;
  } else {
    rhos_c = at::linalg_solve(R_t, b_t).to(x.scalar_type());
  }
  rhos_c = rhos_c.to(x.device());

  const torch::Tensor D1_t = model_t - m0;
  const torch::Tensor last_rho = rhos_c[-1];
  torch::Tensor x_t;
  if (predict_x0_) {
    const torch::Tensor x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0;
    if (D1s_t.defined()) {
      const torch::Tensor corr_res =
          torch::einsum("k,bkc...->bc...", {rhos_c.slice(0, 0, -1), D1s_t});
      x_t = x_t_ - alpha_t * B_h * (corr_res + last_rho * D1_t);
    } else {
      x_t = x_t_ - alpha_t * B_h * (last_rho * D1_t);
    }
  } else {
    const torch::Tensor x_t_ = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0;
    if (D1s_t.defined()) {
      const torch::Tensor corr_res =
          torch::einsum("k,bkc...->bc...", {rhos_c.slice(0, 0, -1), D1s_t});
      x_t = x_t_ - sigma_t * B_h * (corr_res + last_rho * D1_t);
    } else {
      x_t = x_t_ - sigma_t * B_h * (last_rho * D1_t);
    }
  }
  return x_t.to(x.scalar_type());
}

torch::Tensor UniPCMultistepScheduler::step(const torch::Tensor& model_output, double timestep,
                                            const torch::Tensor& sample, Generator& generator) {
  // diffusers UniPCMultistepScheduler.step.
  (void)generator;
  begin_step(timestep);
  torch::NoGradGuard no_grad;
  const int n = static_cast<int>(timesteps_.size());
  if (step_index_ >= n) {
    throw Error("unipc scheduler: step() called more often than there are timesteps (" +
                std::to_string(n) + ")");
  }
  const bool use_corrector = step_index_ > 0 &&
                             std::find(disable_corrector_.begin(), disable_corrector_.end(),
                                       step_index_ - 1) == disable_corrector_.end() &&
                             last_sample_.defined();
  const torch::Tensor converted = convert_model_output(model_output, sample);
  torch::Tensor corrected = sample;
  if (use_corrector) corrected = uni_c_update(converted, last_sample_, this_order_);

  push_model_output(converted);

  const int this_order =
      lower_order_final_ ? std::min(solver_order_, n - step_index_) : solver_order_;
  this_order_ = std::min(this_order, lower_order_nums_ + 1);  // "warmup for multistep"
  last_sample_ = corrected;
  torch::Tensor prev_sample = uni_p_update(corrected, this_order_);
  if (lower_order_nums_ < solver_order_) ++lower_order_nums_;
  ++step_index_;
  return prev_sample;
}

}  // namespace sdgen
