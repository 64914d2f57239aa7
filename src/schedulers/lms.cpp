#include "sdgen/schedulers/lms.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <utility>

#include "sdgen/error.h"

namespace sdgen {

namespace {

bool raw_flag(const SchedulerConfig& config, const char* key) {
  const auto& raw = config.raw;
  if (!raw.is_object() || !raw.contains(key) || raw[key].is_null()) return false;
  return raw[key].get<bool>();
}

// a * b + c in two roundings: `volatile` keeps the compiler from fusing it
// into an FMA (numpy computes the product and the sum as separate ops).
double mul_add(double a, double b, double c) {
  volatile double product = a * b;
  return product + c;
}

// numpy.linspace(start, stop, num, endpoint=True) in float64:
// y_i = i * step + start with step = (stop - start) / (num - 1), y[-1] = stop.
std::vector<double> numpy_linspace(double start, double stop, int num) {
  std::vector<double> y(static_cast<size_t>(num));
  const double delta = stop - start;
  const int div = num - 1;
  for (int i = 0; i < num; ++i) {
    if (div > 0) {
      const double step = delta / div;
      y[static_cast<size_t>(i)] = step == 0 ? mul_add(static_cast<double>(i) / div, delta, start)
                                            : mul_add(static_cast<double>(i), step, start);
    } else {
      y[static_cast<size_t>(i)] = static_cast<double>(i) * delta + start;
    }
  }
  if (num > 1) y.back() = stop;
  return y;
}

// numpy.interp(x, arange(len(fp)), fp) (numpy's compiled arr_interp).
double numpy_interp_unit_grid(double x, const std::vector<double>& fp) {
  const auto n = static_cast<int64_t>(fp.size());
  if (x < 0) return fp.front();
  if (x > static_cast<double>(n - 1)) return fp.back();
  const auto j = static_cast<int64_t>(std::floor(x));
  if (j >= n - 1) return fp[static_cast<size_t>(n - 1)];
  if (static_cast<double>(j) == x) return fp[static_cast<size_t>(j)];
  const double slope = (fp[static_cast<size_t>(j + 1)] - fp[static_cast<size_t>(j)]) /
                       (static_cast<double>(j + 1) - static_cast<double>(j));
  return mul_add(slope, x - static_cast<double>(j), fp[static_cast<size_t>(j)]);
}

// diffusers LMSDiscreteScheduler._sigma_to_t with numpy 2 promotion rules:
// log_sigmas is float32, sigma float64.
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const auto n = static_cast<int64_t>(log_sigmas.size());
  // cumsum(dists >= 0).argmax(): the last index with log_sigmas <= log_sigma
  // (log_sigmas ascend), 0 when there is none; clipped to n - 2.
  int64_t low_idx = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (log_sigma - static_cast<double>(log_sigmas[static_cast<size_t>(i)]) >= 0) low_idx = i;
  }
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const float low = log_sigmas[static_cast<size_t>(low_idx)];
  const float high = log_sigmas[static_cast<size_t>(high_idx)];
  double w = (static_cast<double>(low) - log_sigma) / static_cast<double>(low - high);
  w = std::clamp(w, 0.0, 1.0);
  volatile double a = (1 - w) * static_cast<double>(low_idx);
  volatile double b = w * static_cast<double>(high_idx);
  return a + b;
}

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
    : Scheduler(std::move(config)), lms_order_(lms_order) {
  if (lms_order_ < 1) {
    throw Error("lms scheduler: order must be >= 1, found " + std::to_string(lms_order_));
  }
  const int flags = static_cast<int>(config_.use_karras_sigmas) +
                    static_cast<int>(raw_flag(config_, "use_exponential_sigmas")) +
                    static_cast<int>(raw_flag(config_, "use_beta_sigmas"));
  if (flags > 1) {
    throw Error(
        "lms scheduler: only one of use_beta_sigmas, use_exponential_sigmas, use_karras_sigmas "
        "can be used");
  }
  if (raw_flag(config_, "use_beta_sigmas")) {
    throw Error("lms scheduler: use_beta_sigmas is not supported");
  }
}

void LMSDiscreteScheduler::set_timesteps(int num_inference_steps) {
  // diffusers LMSDiscreteScheduler.set_timesteps.
  check_num_inference_steps(num_inference_steps);
  const int n = num_inference_steps;
  std::vector<float> timesteps;
  if (config_.timestep_spacing == "linspace") {
    // np.linspace(0, n_train - 1, n, dtype=np.float32)[::-1]: not rounded.
    const auto y = numpy_linspace(0.0, static_cast<double>(config_.num_train_timesteps - 1), n);
    for (auto it = y.rbegin(); it != y.rend(); ++it) timesteps.push_back(static_cast<float>(*it));
  } else {
    // "leading" and "trailing" give the integer timesteps DDIM uses.
    for (double t : spaced_timesteps(n)) timesteps.push_back(static_cast<float>(t));
  }

  // Training sigmas: float32 torch values, interpolated by np.interp in float64.
  const torch::Tensor train = train_sigmas().contiguous();
  const float* train_ptr = train.data_ptr<float>();
  const std::vector<double> train_sigmas_d(train_ptr, train_ptr + train.numel());
  std::vector<double> sigmas;
  for (float t : timesteps) sigmas.push_back(numpy_interp_unit_grid(t, train_sigmas_d));

  const bool karras = config_.use_karras_sigmas;
  const bool exponential = raw_flag(config_, "use_exponential_sigmas");
  std::vector<double> timesteps_d(timesteps.begin(), timesteps.end());
  if (karras || exponential) {
    const double sigma_min = sigmas.back();
    const double sigma_max = sigmas.front();
    if (karras) {
      // diffusers _convert_to_karras (arXiv 2206.00364, eq. 5), rho = 7.
      const double rho = 7.0;
      const auto ramp = numpy_linspace(0.0, 1.0, n);
      const double min_inv_rho = std::pow(sigma_min, 1 / rho);
      const double max_inv_rho = std::pow(sigma_max, 1 / rho);
      for (int i = 0; i < n; ++i) {
        const double base =
            mul_add(ramp[static_cast<size_t>(i)], min_inv_rho - max_inv_rho, max_inv_rho);
        sigmas[static_cast<size_t>(i)] = std::pow(base, rho);
      }
    } else {
      // diffusers _convert_to_exponential.
      const auto y = numpy_linspace(std::log(sigma_max), std::log(sigma_min), n);
      for (int i = 0; i < n; ++i)
        sigmas[static_cast<size_t>(i)] = std::exp(y[static_cast<size_t>(i)]);
    }
    // log_sigmas = np.log(float32 sigmas): float32 (correctly rounded here).
    std::vector<float> log_sigmas;
    for (double s : train_sigmas_d) log_sigmas.push_back(static_cast<float>(std::log(s)));
    for (int i = 0; i < n; ++i) {
      // torch.from_numpy(float64 timesteps).to(torch.float32)
      timesteps_d[static_cast<size_t>(i)] =
          static_cast<float>(sigma_to_t(sigmas[static_cast<size_t>(i)], log_sigmas));
    }
  }

  // np.concatenate([sigmas, [0.0]]).astype(np.float32)
  sigmas_f32_.clear();
  for (double s : sigmas) sigmas_f32_.push_back(static_cast<float>(s));
  sigmas_f32_.push_back(0.0f);
  sigmas_.assign(sigmas_f32_.begin(), sigmas_f32_.end());
  timesteps_ = timesteps_d;
  num_inference_steps_ = n;
  step_index_ = -1;
  begin_index_ = -1;
  derivatives_.clear();
}

double LMSDiscreteScheduler::init_noise_sigma() const {
  // diffusers LMSDiscreteScheduler.init_noise_sigma, float32 tensor math.
  if (sigmas_f32_.empty()) return 1.0;
  const float max_sigma = *std::max_element(sigmas_f32_.begin(), sigmas_f32_.end());
  if (config_.timestep_spacing == "linspace" || config_.timestep_spacing == "trailing") {
    return max_sigma;
  }
  return std::sqrt(max_sigma * max_sigma + 1.0f);
}

void LMSDiscreteScheduler::init_step_index(double timestep) {
  // diffusers LMSDiscreteScheduler._init_step_index.
  step_index_ = begin_index_ < 0 ? index_for_timestep(timestep) : begin_index_;
}

torch::Tensor LMSDiscreteScheduler::scale_model_input(const torch::Tensor& sample,
                                                      double timestep) {
  // diffusers LMSDiscreteScheduler.scale_model_input.
  check_ready();
  if (step_index_ < 0) init_step_index(timestep);
  const float sigma = sigmas_f32_.at(static_cast<size_t>(step_index_));
  return sample / std::sqrt(sigma * sigma + 1.0f);
}

double LMSDiscreteScheduler::lms_coefficient(int order, int t, int current_order) const {
  // diffusers LMSDiscreteScheduler.get_lms_coefficient. The integrand's
  // factors are float32 tensors there ((tau - sigma_k) / (sigma_c - sigma_k)
  // with tau rounded to float32); with order 1 it is the Python float 1.0.
  const auto s = [&](int i) { return sigmas_f32_.at(static_cast<size_t>(i)); };
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
  check_ready();
  if (step_index_ < 0) init_step_index(timestep);
  if (step_index_ >= num_inference_steps_) {
    throw Error("lms scheduler: step() called more often than set_timesteps(" +
                std::to_string(num_inference_steps_) + ") allows");
  }
  const float sigma = sigmas_f32_.at(static_cast<size_t>(step_index_));

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

int LMSDiscreteScheduler::sigma_index(double timestep) const {
  // diffusers EulerDiscreteScheduler.add_noise's choice of step index.
  if (begin_index_ < 0) return index_for_timestep(timestep);
  if (step_index_ >= 0) return step_index_;
  return begin_index_;
}

torch::Tensor LMSDiscreteScheduler::add_noise(const torch::Tensor& original,
                                              const torch::Tensor& noise, double timestep) const {
  check_ready();
  const float sigma = sigmas_f32_.at(static_cast<size_t>(sigma_index(timestep)));
  const torch::Tensor sigma_t =
      torch::tensor(sigma, torch::kFloat32).to(original.device(), original.scalar_type());
  return original + noise.to(original.device()) * sigma_t;
}

}  // namespace sdgen
