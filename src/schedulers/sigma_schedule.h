#pragma once

// Private helpers shared by the sigma-based schedulers (SigmaScheduler's
// Euler, Euler ancestral, Heun and LMS; MultistepScheduler's DPM-Solver and
// UniPC): diffusers builds their noise levels in numpy float64 from
// the float32 training sigmas and stores them as float32 tensors; these
// functions reproduce numpy's arithmetic step by step so that every float32
// value lands where diffusers' does.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "sdgen/config.h"
#include "sdgen/error.h"

namespace sdgen::sigma_schedule {

// numpy.linspace(start, stop, num) in float64: i * step + start with
// step = (stop - start) / (num - 1), two roundings as numpy's ufuncs, the
// last value exactly `stop`.
std::vector<double> np_linspace(double start, double stop, int num);

// numpy.arange(start, 0, -step) in float64: ceil(start / step) values
// start + i * ((start - step) - start), two roundings as numpy computes them
// (diffusers' "trailing" timestep spacing before its round and - 1).
std::vector<double> np_arange_down(double start, double step);

// np.linspace(0, num_train_timesteps - 1, steps, dtype=np.float32)[::-1]:
// float64 values i * step (the last exactly n - 1), rounded to float32,
// descending (diffusers EulerDiscreteScheduler.set_timesteps, "linspace").
std::vector<double> linspace_timesteps(int64_t num_train_timesteps, int steps);

// The float32 training sigmas ((1 - a) / a) ** 0.5 in training order.
std::vector<float> to_float_vector(const torch::Tensor& t);

// np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas) in float64
// (numpy's compiled_interp: slope * (x - x_j) + y_j, exact at the knots).
std::vector<double> interp_sigmas(const std::vector<double>& timesteps,
                                  const std::vector<float>& train_sigmas);

// np.log of a float32 array (float32 results).
std::vector<float> log_sigmas(const std::vector<float>& train_sigmas);

// diffusers EulerDiscreteScheduler._sigma_to_t: the fractional timestep whose
// log-sigma interpolates `sigma`, with numpy 2's promotion rules (the
// denominator `low - high` is float32 arithmetic).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);

// diffusers EulerDiscreteScheduler._convert_to_karras (Karras et al. 2022,
// arXiv 2206.00364, eq. 5 with rho = 7), float64.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int steps);

// diffusers EulerDiscreteScheduler._convert_to_exponential, float64.
std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int steps);

// float64 values rounded to float32 (numpy .astype(np.float32)), as a CPU
// float32 tensor.
torch::Tensor to_float32_tensor(const std::vector<double>& values);
// A float32 tensor's values widened to double.
std::vector<double> to_double_vector(const torch::Tensor& t);

// Timesteps of diffusers' k-diffusion style set_timesteps (Euler, Euler
// ancestral, Heun) for "linspace" (float32 values) and "leading"
// (arange(0, n) * (N // n) + steps_offset, which may reach N as diffusers
// allows: np.interp clamps it to the last sigma). Callers take "trailing"
// from Scheduler::spaced_timesteps; any other spacing throws Error.
std::vector<double> k_timesteps(const std::string& timestep_spacing, int64_t num_train_timesteps,
                                int steps, int steps_offset);

// diffusers init_noise_sigma of these schedulers: max(sigmas) for "linspace"
// and "trailing", (max(sigmas) ** 2 + 1) ** 0.5 for "leading" (float32).
double init_noise_sigma(const torch::Tensor& sigmas, const std::string& timestep_spacing);
// scale_model_input: sample / ((sigma ** 2 + 1) ** 0.5), sigma a 0-dim float32 tensor.
torch::Tensor scale_by_sigma(const torch::Tensor& sample, const torch::Tensor& sigma);
// diffusers EulerDiscreteScheduler.add_noise: original + noise * sigmas[index],
// sigmas taken in the sample's dtype and device.
torch::Tensor add_noise_at(const torch::Tensor& original, const torch::Tensor& noise,
                           const torch::Tensor& sigmas, int index);

// Optional scheduler_config.json keys that SchedulerConfig has no field for
// (read from config.raw; null and absent give the default).
std::optional<double> raw_number(const nlohmann::json& raw, const char* key);
std::string raw_string(const nlohmann::json& raw, const char* key, const std::string& fallback);
bool raw_bool(const nlohmann::json& raw, const char* key, bool fallback);

// A config.raw value with diffusers' default when absent or null (used by
// DPM-Solver++ and UniPC).
template <typename T>
T raw_value(const SchedulerConfig& config, const char* key, T fallback) {
  if (!config.raw.is_object()) return fallback;
  auto it = config.raw.find(key);
  if (it == config.raw.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const std::exception& e) {
    throw Error(std::string("scheduler config: key '") + key +
                "' has an unexpected type: " + e.what());
  }
}

// diffusers _sigma_to_alpha_sigma_t (VP schedules): alpha_t = 1 / sqrt(sigma^2
// + 1), sigma_t = sigma * alpha_t, as float32 0-dim tensor ops.
std::pair<torch::Tensor, torch::Tensor> alpha_sigma_t(const torch::Tensor& sigma);
// DPM-Solver / UniPC lambda_t = log(alpha_t) - log(sigma_t).
torch::Tensor lambda_of(const torch::Tensor& alpha_t, const torch::Tensor& sigma_t);

}  // namespace sdgen::sigma_schedule
