#include "sigma_schedule.h"

#include <algorithm>
#include <cmath>

#include "sdgen/error.h"

namespace sdgen::sigma_schedule {

std::vector<double> np_arange_down(double start, double step) {
  const auto length = static_cast<int64_t>(std::ceil((0.0 - start) / -step));
  const double next = start + -step;
  const double delta = next - start;
  std::vector<double> y;
  for (int64_t i = 0; i < length; ++i) {
    // `volatile` keeps the compiler from fusing i * delta + start into an
    // FMA, which would round differently from numpy's two operations.
    volatile double offset = static_cast<double>(i) * delta;
    y.push_back(i == 0 ? start : (i == 1 ? next : start + offset));
  }
  return y;
}

std::vector<double> np_linspace(double start, double stop, int num) {
  // numpy.linspace: y = arange(num) * step + start (two roundings), the last
  // value set to stop; a single point is 0 * delta + start.
  std::vector<double> y(static_cast<size_t>(std::max(num, 0)));
  if (num <= 0) return y;
  const int div = num - 1;
  const double delta = stop - start;
  if (div == 0) {
    y[0] = 0.0 * delta + start;
    return y;
  }
  const double step = delta / div;
  for (int i = 0; i < num; ++i) {
    // `volatile` keeps i * step + start two roundings (numpy's two ufuncs),
    // never one fused multiply-add.
    volatile double scaled = static_cast<double>(i) * step;
    y[static_cast<size_t>(i)] = scaled + start;
  }
  y.back() = stop;
  return y;
}

std::vector<double> linspace_timesteps(int64_t num_train_timesteps, int steps) {
  std::vector<double> values =
      np_linspace(0.0, static_cast<double>(num_train_timesteps - 1), steps);
  std::vector<double> timesteps;
  timesteps.reserve(values.size());
  for (auto it = values.rbegin(); it != values.rend(); ++it) {
    timesteps.push_back(static_cast<double>(static_cast<float>(*it)));
  }
  return timesteps;
}

std::vector<float> to_float_vector(const torch::Tensor& t) {
  const torch::Tensor c = t.to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

std::vector<double> interp_sigmas(const std::vector<double>& timesteps,
                                  const std::vector<float>& train_sigmas) {
  // numpy compiled_interp with xp = 0, 1, ..., n - 1: left of xp[0] gives
  // fp[0], at or right of xp[n-1] gives fp[n-1], a knot gives its value,
  // otherwise slope * (x - xp[j]) + fp[j] with slope = (fp[j+1] - fp[j]) / 1.
  const auto n = static_cast<int64_t>(train_sigmas.size());
  std::vector<double> out;
  out.reserve(timesteps.size());
  for (double x : timesteps) {
    if (std::isnan(x)) {
      out.push_back(x);
      continue;
    }
    if (x < 0.0) {
      out.push_back(train_sigmas.front());
      continue;
    }
    if (x >= static_cast<double>(n - 1)) {
      out.push_back(train_sigmas.back());
      continue;
    }
    const auto j = static_cast<int64_t>(std::floor(x));
    const double yj = train_sigmas[static_cast<size_t>(j)];
    if (static_cast<double>(j) == x) {
      out.push_back(yj);
      continue;
    }
    const double yj1 = train_sigmas[static_cast<size_t>(j + 1)];
    const double slope = (yj1 - yj) / (static_cast<double>(j + 1) - static_cast<double>(j));
    volatile double scaled = slope * (x - static_cast<double>(j));
    out.push_back(scaled + yj);
  }
  return out;
}

std::vector<float> log_sigmas(const std::vector<float>& train_sigmas) {
  std::vector<float> out;
  out.reserve(train_sigmas.size());
  for (float s : train_sigmas) out.push_back(static_cast<float>(std::log(static_cast<double>(s))));
  return out;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  // diffusers EulerDiscreteScheduler._sigma_to_t.
  const auto n = static_cast<int64_t>(log_sigmas.size());
  if (n < 2) throw Error("sigma_to_t: need at least 2 training sigmas");
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // low_idx = cumsum(dists >= 0).argmax() (the last index with
  // log_sigma >= log_sigmas[i], 0 when there is none), clipped to n - 2.
  int64_t low_idx = 0;
  int64_t count = 0, best = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double dist = log_sigma - static_cast<double>(log_sigmas[static_cast<size_t>(i)]);
    if (dist >= 0) ++count;
    if (count > best) {
      best = count;
      low_idx = i;
    }
  }
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const float low = log_sigmas[static_cast<size_t>(low_idx)];
  const float high = log_sigmas[static_cast<size_t>(high_idx)];
  // (low - log_sigma) is float64, (low - high) float32 (both float32 arrays).
  const float denominator = low - high;
  double w = (static_cast<double>(low) - log_sigma) / static_cast<double>(denominator);
  w = std::clamp(w, 0.0, 1.0);
  volatile double a = (1 - w) * static_cast<double>(low_idx);
  volatile double b = w * static_cast<double>(high_idx);
  return a + b;
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int steps) {
  // diffusers _convert_to_karras: ramp = np.linspace(0, 1, n);
  // (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho.
  const double rho = 7.0;
  const std::vector<double> ramp = np_linspace(0.0, 1.0, steps);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas;
  sigmas.reserve(ramp.size());
  for (double r : ramp) {
    volatile double scaled = r * (min_inv_rho - max_inv_rho);
    sigmas.push_back(std::pow(max_inv_rho + scaled, rho));
  }
  return sigmas;
}

std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int steps) {
  // diffusers _convert_to_exponential:
  // np.exp(np.linspace(log(sigma_max), log(sigma_min), n)).
  std::vector<double> sigmas = np_linspace(std::log(sigma_max), std::log(sigma_min), steps);
  for (double& s : sigmas) s = std::exp(s);
  return sigmas;
}

torch::Tensor to_float32_tensor(const std::vector<double>& values) {
  std::vector<float> f(values.begin(), values.end());
  return torch::tensor(f, torch::kFloat32);
}

std::vector<double> to_double_vector(const torch::Tensor& t) {
  const torch::Tensor d = t.to(torch::kCPU, torch::kFloat64).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

std::optional<double> raw_number(const nlohmann::json& raw, const char* key) {
  if (!raw.is_object()) return std::nullopt;
  const auto it = raw.find(key);
  if (it == raw.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) {
    throw Error(std::string("scheduler config key '") + key + "' must be a number, found " +
                it->dump());
  }
  return it->get<double>();
}

std::string raw_string(const nlohmann::json& raw, const char* key, const std::string& fallback) {
  if (!raw.is_object()) return fallback;
  const auto it = raw.find(key);
  if (it == raw.end() || it->is_null()) return fallback;
  if (!it->is_string()) {
    throw Error(std::string("scheduler config key '") + key + "' must be a string, found " +
                it->dump());
  }
  return it->get<std::string>();
}

bool raw_bool(const nlohmann::json& raw, const char* key, bool fallback) {
  if (!raw.is_object()) return fallback;
  const auto it = raw.find(key);
  if (it == raw.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    throw Error(std::string("scheduler config key '") + key + "' must be true or false, found " +
                it->dump());
  }
  return it->get<bool>();
}

}  // namespace sdgen::sigma_schedule

namespace sdgen::sigma_schedule {

std::vector<double> k_timesteps(const std::string& timestep_spacing, int64_t num_train_timesteps,
                                int steps, int steps_offset) {
  if (timestep_spacing == "linspace") return linspace_timesteps(num_train_timesteps, steps);
  if (timestep_spacing == "leading") {
    // (np.arange(0, n) * step_ratio).round()[::-1].astype(np.float32) + steps_offset
    const int64_t step_ratio = num_train_timesteps / steps;
    std::vector<double> timesteps;
    timesteps.reserve(static_cast<size_t>(steps));
    for (int64_t i = steps - 1; i >= 0; --i) {
      timesteps.push_back(static_cast<double>(static_cast<float>(
          static_cast<float>(i * step_ratio) + static_cast<float>(steps_offset))));
    }
    return timesteps;
  }
  throw Error("scheduler config: timestep_spacing '" + timestep_spacing +
              "' is not supported (expected leading, trailing or linspace)");
}

double init_noise_sigma(const torch::Tensor& sigmas, const std::string& timestep_spacing) {
  const torch::Tensor max_sigma = sigmas.max();
  if (timestep_spacing == "linspace" || timestep_spacing == "trailing") {
    return max_sigma.item<double>();
  }
  return (max_sigma.pow(2) + 1).pow(0.5).item<double>();
}

torch::Tensor scale_by_sigma(const torch::Tensor& sample, const torch::Tensor& sigma) {
  return sample / (sigma.pow(2) + 1).pow(0.5);
}

torch::Tensor add_noise_at(const torch::Tensor& original, const torch::Tensor& noise,
                           const torch::Tensor& sigmas, int index) {
  if (index < 0 || index >= sigmas.size(0)) {
    throw Error("add_noise: step index " + std::to_string(index) + " is outside the " +
                std::to_string(sigmas.size(0)) + " sigmas of the schedule");
  }
  const torch::Tensor sigma =
      sigmas.to(original.device(), original.scalar_type())[index].reshape({1});
  return original + noise.to(original.device()) * sigma;
}

std::pair<torch::Tensor, torch::Tensor> alpha_sigma_t(const torch::Tensor& sigma) {
  const torch::Tensor alpha_t = (sigma.pow(2) + 1).pow(0.5).reciprocal();
  return {alpha_t, sigma * alpha_t};
}

torch::Tensor lambda_of(const torch::Tensor& alpha_t, const torch::Tensor& sigma_t) {
  return torch::log(alpha_t) - torch::log(sigma_t);
}

}  // namespace sdgen::sigma_schedule
