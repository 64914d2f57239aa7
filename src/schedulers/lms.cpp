#include "sdgen/schedulers/lms.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>

#include "sdgen/error.h"
#include "sigma_schedule.h"

namespace sdgen {

namespace ss = sigma_schedule;

namespace {

// QUADPACK dqk21 (the first and, for these polynomials, only pass of scipy's
// integrate.quad): 21-point Kronrod nodes/weights and the 10-point Gauss
// weights; returns the integral and sets `abserr` to QUADPACK's estimate.
template <typename F>
double gauss_kronrod21(const F& f, double a, double b, double* abserr) {
  static const double xgk[11] = {
      0.995657163025808080735527280689003, 0.973906528517171720077964012084452,
      0.930157491355708226001207180059508, 0.865063366688984510732096688423493,
      0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
      0.562757134668604683339000099272694, 0.433395394129247190799265943165784,
      0.294392862701460198131126603103866, 0.148874338981631210884826001129720,
      0.000000000000000000000000000000000};
  static const double wgk[11] = {
      0.011694638867371874278064396062192, 0.032558162307964727478818972459390,
      0.054755896574351996031381300244580, 0.075039674810919952767043140916190,
      0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
      0.123491976262065851077208814781201, 0.134709217311473325928054001771707,
      0.142775938577060080797094273138717, 0.147739104901338491374841515972068,
      0.149445554002916905664936468389821};
  static const double wg[5] = {
      0.066671344308688137593568809893332, 0.149451349150580593145776339657697,
      0.219086362515982043995534934228163, 0.269266719309996355091226921569469,
      0.295524224714752870173892994651338};
  const double centr = 0.5 * (a + b);
  const double hlgth = 0.5 * (b - a);
  const double dhlgth = std::fabs(hlgth);
  double fv1[10], fv2[10];
  double resg = 0.0;
  const double fc = f(centr);
  double resk = wgk[10] * fc;
  // Gauss nodes (odd Fortran indices 2, 4, ..., 10 -> 0-based 1, 3, ..., 9).
  for (int j = 0; j < 5; ++j) {
    const int jtw = 2 * j + 1;
    const double absc = hlgth * xgk[jtw];
    const double fval1 = f(centr - absc);
    const double fval2 = f(centr + absc);
    fv1[jtw] = fval1;
    fv2[jtw] = fval2;
    const double fsum = fval1 + fval2;
    resg += wg[j] * fsum;
    resk += wgk[jtw] * fsum;
  }
  for (int j = 0; j < 5; ++j) {
    const int jtwm1 = 2 * j;
    const double absc = hlgth * xgk[jtwm1];
    const double fval1 = f(centr - absc);
    const double fval2 = f(centr + absc);
    fv1[jtwm1] = fval1;
    fv2[jtwm1] = fval2;
    resk += wgk[jtwm1] * (fval1 + fval2);
  }
  const double reskh = resk * 0.5;
  double resasc = wgk[10] * std::fabs(fc - reskh);
  for (int j = 0; j < 10; ++j) {
    resasc += wgk[j] * (std::fabs(fv1[j] - reskh) + std::fabs(fv2[j] - reskh));
  }
  resasc *= dhlgth;
  double err = std::fabs((resk - resg) * hlgth);
  if (resasc != 0 && err != 0) err = resasc * std::min(1.0, std::pow(200 * err / resasc, 1.5));
  *abserr = err;
  return resk * hlgth;
}

}  // namespace

LMSDiscreteScheduler::LMSDiscreteScheduler(SchedulerConfig config, int lms_order)
    : SigmaScheduler(std::move(config), /*zero_snr_tweak=*/false), lms_order_(lms_order) {
  if (lms_order_ < 1) {
    throw Error("lms scheduler: order must be >= 1, found " + std::to_string(lms_order_));
  }
  use_exponential_sigmas_ = ss::raw_bool(config_.raw, "use_exponential_sigmas", false);
  const bool beta = ss::raw_bool(config_.raw, "use_beta_sigmas", false);
  const int flags = static_cast<int>(config_.use_karras_sigmas) +
                    static_cast<int>(use_exponential_sigmas_) + static_cast<int>(beta);
  if (flags > 1) {
    throw Error(
        "lms scheduler: only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas "
        "can be used");
  }
  if (beta) {
    throw Error("lms scheduler: use_beta_sigmas is not supported");
  }
}

void LMSDiscreteScheduler::set_timesteps(int num_inference_steps) {
  // diffusers LMSDiscreteScheduler.set_timesteps: float32 timesteps
  // (np.linspace(0, n_train - 1, n, dtype=np.float32)[::-1] for "linspace",
  // DDIM's integer timesteps for "leading" and "trailing"), sigmas
  // interpolated by np.interp in float64 from the float32 training sigmas.
  check_num_inference_steps(num_inference_steps);
  torch::NoGradGuard no_grad;
  const int n = num_inference_steps;
  std::vector<double> timesteps = config_.timestep_spacing == "linspace"
                                      ? ss::linspace_timesteps(config_.num_train_timesteps, n)
                                      : spaced_timesteps(n);
  std::vector<double> sigmas = interpolated_sigmas(timesteps);
  convert_sigmas(sigmas, timesteps, n, use_exponential_sigmas_);
  // torch.from_numpy(float64 timesteps).to(torch.float32)
  for (double& t : timesteps) t = static_cast<double>(static_cast<float>(t));
  // np.concatenate([sigmas, [0.0]]).astype(np.float32)
  sigmas.push_back(0.0);
  set_schedule(ss::to_float32_tensor(sigmas), std::move(timesteps), n);
  derivatives_.clear();
}

double LMSDiscreteScheduler::lms_coefficient(int order, int t, int current_order) const {
  // diffusers LMSDiscreteScheduler.get_lms_coefficient. The integrand's
  // factors are float32 tensors there ((tau - sigma_k) / (sigma_c - sigma_k)
  // with tau rounded to float32); with order 1 it is the Python float 1.0.
  const auto s = [&](int i) { return static_cast<float>(sigmas_.at(static_cast<size_t>(i))); };
  const auto lms_derivative = [&](double tau) -> double {
    bool any = false;
    float prod = 1.0f;
    for (int k = 0; k < order; ++k) {
      if (current_order == k) continue;
      const float factor = (static_cast<float>(tau) - s(t - k)) / (s(t - current_order) - s(t - k));
      prod = any ? prod * factor : factor;
      any = true;
    }
    return any ? static_cast<double>(prod) : 1.0;
  };
  // scipy.integrate.quad(f, a, b) integrates over [min(a, b), max(a, b)] and
  // negates the result when b < a.
  const double a = s(t);
  const double b = s(t + 1);
  const bool flip = b < a;
  double abserr = 0;
  const double result = gauss_kronrod21(lms_derivative, std::min(a, b), std::max(a, b), &abserr);
  // quad (epsrel=1e-4) stops after this first rule when abserr <= 1e-4 |result|,
  // always the case for these degree <= 3 polynomials.
  return flip ? -result : result;
}

torch::Tensor LMSDiscreteScheduler::step(const torch::Tensor& model_output, double timestep,
                                         const torch::Tensor& sample, Generator& generator) {
  // diffusers LMSDiscreteScheduler.step.
  (void)generator;
  begin_step(timestep);
  if (step_index_ >= num_inference_steps_) {
    throw Error("lms scheduler: step() called more often than set_timesteps(" +
                std::to_string(num_inference_steps_) + ") allows");
  }
  const auto sigma = static_cast<float>(sigmas_.at(static_cast<size_t>(step_index_)));

  // 1. compute predicted original sample (x_0) from sigma-scaled predicted noise
  torch::Tensor pred_original_sample;
  const std::string& type = config_.prediction_type;
  if (type == "epsilon") {
    pred_original_sample = sample - model_output * sigma;
  } else if (type == "v_prediction") {
    // model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    const float s2p1 = sigma * sigma + 1.0f;
    pred_original_sample = model_output * (-sigma / std::sqrt(s2p1)) + sample / s2p1;
  } else {
    pred_original_sample = model_output;
  }

  // 2. Convert to an ODE derivative
  derivatives_.push_back((sample - pred_original_sample) / sigma);
  if (static_cast<int>(derivatives_.size()) > lms_order_) derivatives_.erase(derivatives_.begin());

  // 3. Compute linear multistep coefficients
  const int order = std::min(step_index_ + 1, lms_order_);
  // 4. prev_sample = sample + sum(coeff * derivative), newest derivative first,
  // summed left to right from 0 like Python's sum().
  // zip(lms_coeffs, reversed(derivatives)) stops at the shorter list: after
  // img2img starts mid-schedule there are fewer derivatives than the order.
  const int terms = std::min(order, static_cast<int>(derivatives_.size()));
  torch::Tensor total;
  for (int c = 0; c < terms; ++c) {
    const float coeff = static_cast<float>(lms_coefficient(order, step_index_, c));
    const torch::Tensor term =
        derivatives_[derivatives_.size() - 1 - static_cast<size_t>(c)] * coeff;
    total = c == 0 ? term : total + term;
  }
  ++step_index_;
  return sample + total;
}

}  // namespace sdgen
