#include "sdgen/schedulers/scheduler.h"

#include "sigma_schedule.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <sstream>
#include <utility>

#include "sdgen/error.h"
#include "sdgen/schedulers/ddim.h"
#include "sdgen/schedulers/ddpm.h"
#include "sdgen/schedulers/dpm_solver_multistep.h"
#include "sdgen/schedulers/euler.h"
#include "sdgen/schedulers/euler_ancestral.h"
#include "sdgen/schedulers/heun.h"
#include "sdgen/schedulers/lcm.h"
#include "sdgen/schedulers/lms.h"
#include "sdgen/schedulers/pndm.h"
#include "sdgen/schedulers/unipc_multistep.h"

namespace sdgen {

namespace {

const torch::TensorOptions kFloat32Cpu =
    torch::TensorOptions().dtype(torch::kFloat32).device(torch::kCPU);

// The beta schedules of diffusers' DDIMScheduler/DDPMScheduler.__init__, built
// with the same torch ops so that the float32 values are identical.
torch::Tensor make_betas(const SchedulerConfig& config) {
  const int64_t n = config.num_train_timesteps;
  if (!config.trained_betas.empty()) {
    if (static_cast<int64_t>(config.trained_betas.size()) != n) {
      throw Error("scheduler config: trained_betas has " +
                  std::to_string(config.trained_betas.size()) +
                  " values, expected num_train_timesteps = " + std::to_string(n));
    }
    // torch.tensor(trained_betas, dtype=torch.float32): each double rounded.
    return torch::tensor(config.trained_betas, torch::kFloat64).to(torch::kFloat32);
  }
  const std::string& schedule = config.beta_schedule;
  if (schedule == "linear") {
    return torch::linspace(config.beta_start, config.beta_end, n, kFloat32Cpu);
  }
  if (schedule == "scaled_linear") {
    // "this schedule is very specific to the latent diffusion model":
    // linspace(beta_start**0.5, beta_end**0.5, n, float32) ** 2.
    return torch::linspace(std::pow(config.beta_start, 0.5), std::pow(config.beta_end, 0.5), n,
                           kFloat32Cpu)
        .pow(2);
  }
  if (schedule == "squaredcos_cap_v2") return betas_for_alpha_bar(static_cast<int>(n));
  if (schedule == "sigmoid") {
    // GeoDiff sigmoid schedule (DDPMScheduler.__init__).
    return torch::sigmoid(torch::linspace(-6, 6, n, kFloat32Cpu)) *
               (config.beta_end - config.beta_start) +
           config.beta_start;
  }
  throw Error("scheduler config: beta_schedule '" + schedule +
              "' is not supported (expected linear, scaled_linear, squaredcos_cap_v2 or "
              "sigmoid, or trained_betas)");
}

std::string to_lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// numpy.round: round half to even (the default floating-point rounding mode).
double round_half_even(double x) { return std::nearbyint(x); }

}  // namespace

torch::Tensor betas_for_alpha_bar(int num_diffusion_timesteps, double max_beta) {
  // diffusers betas_for_alpha_bar(alpha_transform_type="cosine"): Python
  // double arithmetic, then torch.tensor(betas, dtype=torch.float32).
  const auto alpha_bar = [](double t) {
    return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2.0);
  };
  std::vector<double> betas;
  betas.reserve(static_cast<size_t>(num_diffusion_timesteps));
  for (int i = 0; i < num_diffusion_timesteps; ++i) {
    const double t1 = static_cast<double>(i) / num_diffusion_timesteps;
    const double t2 = static_cast<double>(i + 1) / num_diffusion_timesteps;
    betas.push_back(std::min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta));
  }
  return torch::tensor(betas, torch::kFloat64).to(torch::kFloat32);
}

torch::Tensor rescale_zero_terminal_snr(const torch::Tensor& betas) {
  // diffusers rescale_zero_terminal_snr, op for op in the betas' dtype.
  torch::Tensor alphas = 1.0 - betas;
  torch::Tensor alphas_bar_sqrt = torch::cumprod(alphas, 0).sqrt();
  const torch::Tensor alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone();
  const torch::Tensor alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone();
  // Shift so the last timestep is zero, then scale the first back.
  alphas_bar_sqrt -= alphas_bar_sqrt_T;
  alphas_bar_sqrt *= alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T);
  const torch::Tensor alphas_bar = alphas_bar_sqrt.pow(2);
  alphas = alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1);
  alphas = torch::cat({alphas_bar.slice(0, 0, 1), alphas});
  return 1 - alphas;
}

Scheduler::Scheduler(SchedulerConfig config) : config_(std::move(config)) {
  if (config_.num_train_timesteps <= 0) {
    throw Error("scheduler config: num_train_timesteps must be > 0, found " +
                std::to_string(config_.num_train_timesteps));
  }
  const std::string& p = config_.prediction_type;
  if (p != "epsilon" && p != "v_prediction" && p != "sample") {
    throw Error("scheduler config: prediction_type '" + p +
                "' is not supported (expected epsilon, v_prediction or sample)");
  }
  torch::NoGradGuard no_grad;
  betas_tensor_ = make_betas(config_);
  if (config_.rescale_betas_zero_snr) betas_tensor_ = rescale_zero_terminal_snr(betas_tensor_);
  // alphas_cumprod stays a float32 tensor in diffusers; torch.cumprod on the
  // CPU accumulates in double and rounds each partial product to float32.
  alphas_cumprod_tensor_ = torch::cumprod(1.0 - betas_tensor_, 0).contiguous();
  const auto to_vector = [](const torch::Tensor& t) {
    const torch::Tensor d = t.to(torch::kFloat64).contiguous();
    return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
  };
  betas_ = to_vector(betas_tensor_);
  alphas_cumprod_ = to_vector(alphas_cumprod_tensor_);
}

void Scheduler::check_num_inference_steps(int steps) const {
  if (steps <= 0 || steps > config_.num_train_timesteps) {
    throw Error(name() + " scheduler: num_inference_steps must be in [1, " +
                std::to_string(config_.num_train_timesteps) + "], found " + std::to_string(steps));
  }
}

void Scheduler::check_ready() const {
  if (num_inference_steps_ <= 0) {
    throw Error(name() + " scheduler: step() called before set_timesteps()");
  }
}

std::vector<double> Scheduler::spaced_timesteps(int steps) const {
  // diffusers DDIMScheduler.set_timesteps ("linspace", "leading" and
  // "trailing" as in Table 2 of arXiv 2305.08891), reproducing numpy's
  // arithmetic so that every rounding lands where diffusers' does.
  check_num_inference_steps(steps);
  const int64_t n_train = config_.num_train_timesteps;
  const std::string& spacing = config_.timestep_spacing;
  std::vector<double> timesteps;
  timesteps.reserve(static_cast<size_t>(steps) + 1);
  if (spacing == "linspace") {
    // np.linspace(0, n_train - 1, steps).round()[::-1]: y_i = i * step with
    // step = (n_train - 1) / (steps - 1), the last value exactly n_train - 1.
    const double stop = static_cast<double>(n_train - 1);
    if (steps == 1) {
      timesteps.push_back(0.0);
    } else {
      const double step = stop / (steps - 1);
      for (int i = steps - 1; i >= 0; --i) {
        const double y = (i == steps - 1) ? stop : static_cast<double>(i) * step;
        timesteps.push_back(round_half_even(y));
      }
    }
  } else if (spacing == "leading") {
    // (np.arange(0, steps) * (n_train // steps)).round()[::-1] + steps_offset
    const int64_t step_ratio = n_train / steps;
    for (int64_t i = steps - 1; i >= 0; --i) {
      timesteps.push_back(static_cast<double>(i * step_ratio + config_.steps_offset));
    }
  } else if (spacing == "trailing") {
    // np.round(np.arange(n_train, 0, -n_train / steps)) - 1. numpy's arange
    // has ceil(n_train / ratio) entries start + i * ((start - ratio) - start).
    const double step_ratio = static_cast<double>(n_train) / steps;
    for (const double y : sigma_schedule::np_arange_down(n_train, step_ratio)) {
      const double value = round_half_even(y) - 1;
      // For some step counts (61, 103, ...) numpy's arange yields one value
      // more than `steps`, rounding to timestep -1; diffusers would then run
      // an extra step at alphas_cumprod[-1]. We keep only valid timesteps.
      if (value >= 0 && static_cast<int64_t>(timesteps.size()) < steps) {
        timesteps.push_back(value);
      }
    }
  } else {
    throw Error("scheduler config: timestep_spacing '" + spacing +
                "' is not supported (expected leading, trailing or linspace)");
  }
  for (double t : timesteps) {
    if (t < 0 || t >= static_cast<double>(n_train)) {
      throw Error(name() + " scheduler: timestep " + std::to_string(static_cast<int64_t>(t)) +
                  " from timestep_spacing '" + spacing + "' and steps_offset " +
                  std::to_string(config_.steps_offset) + " is outside [0, " +
                  std::to_string(n_train) + ")");
    }
  }
  return timesteps;
}

int64_t Scheduler::train_timestep(double timestep) const {
  const double rounded = std::nearbyint(timestep);
  if (!std::isfinite(timestep) || rounded != timestep || rounded < 0 ||
      rounded >= static_cast<double>(config_.num_train_timesteps)) {
    std::ostringstream message;
    message << name() << " scheduler: timestep " << timestep << " is not an integer in [0, "
            << config_.num_train_timesteps << ")";
    throw Error(message.str());
  }
  return static_cast<int64_t>(rounded);
}

float Scheduler::alpha_prod(int64_t t) const {
  return static_cast<float>(alphas_cumprod_.at(static_cast<size_t>(t)));
}

torch::Tensor Scheduler::predict_original(const torch::Tensor& model_output,
                                          const torch::Tensor& sample, double alpha_prod_t) const {
  // Step 3 of diffusers DDIMScheduler.step / step 2 of DDPMScheduler.step
  // ("predicted x_0" of formula (12) of arXiv 2010.02502), with diffusers'
  // float32 scalars: alpha_prod_t ** 0.5 and (1 - alpha_prod_t) ** 0.5.
  const float alpha = static_cast<float>(alpha_prod_t);
  const float beta = 1.0f - alpha;
  const std::string& type = config_.prediction_type;
  if (type == "epsilon") {
    return (sample - model_output * std::sqrt(beta)) / std::sqrt(alpha);
  }
  if (type == "sample") return model_output;
  // v_prediction (arXiv 2202.00512, section 4).
  return sample * std::sqrt(alpha) - model_output * std::sqrt(beta);
}

torch::Tensor Scheduler::predict_epsilon(const torch::Tensor& model_output,
                                         const torch::Tensor& sample, double alpha_prod_t) const {
  // `pred_epsilon` of diffusers DDIMScheduler.step, step 3.
  const float alpha = static_cast<float>(alpha_prod_t);
  const float beta = 1.0f - alpha;
  const std::string& type = config_.prediction_type;
  if (type == "epsilon") return model_output;
  if (type == "sample") {
    return (sample - model_output * std::sqrt(alpha)) / std::sqrt(beta);
  }
  return model_output * std::sqrt(alpha) + sample * std::sqrt(beta);
}

torch::Tensor Scheduler::clip_or_threshold(const torch::Tensor& pred_original_sample) const {
  // "4. Clip or threshold predicted x_0" of diffusers DDIMScheduler.step.
  if (config_.thresholding) return threshold_sample(pred_original_sample);
  if (config_.clip_sample) {
    return pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
  }
  return pred_original_sample;
}

torch::Tensor Scheduler::threshold_sample(const torch::Tensor& sample) const {
  // diffusers DDPMScheduler._threshold_sample: per image, s = the
  // dynamic_thresholding_ratio quantile of |x_0|, clamped to
  // [1, sample_max_value]; x_0 is clamped to [-s, s] and divided by s.
  const auto dtype = sample.scalar_type();
  torch::Tensor x = sample;
  if (dtype != torch::kFloat32 && dtype != torch::kFloat64) x = x.to(torch::kFloat32);
  const auto shape = x.sizes().vec();
  x = x.reshape({shape[0], -1});
  torch::Tensor s = torch::quantile(x.abs(), config_.dynamic_thresholding_ratio, 1);
  s = torch::clamp(s, 1.0, config_.sample_max_value).unsqueeze(1);
  x = torch::clamp(x, -s, s) / s;
  return x.reshape(shape).to(dtype);
}

torch::Tensor Scheduler::add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                                   double timestep) const {
  // diffusers DDPMScheduler.add_noise: alphas_cumprod converted to the
  // sample's dtype first, then sqrt(a) * x_0 + sqrt(1 - a) * noise.
  const int64_t t = train_timestep(timestep);
  const torch::Tensor alpha_prod = alphas_cumprod_tensor_.to(original.scalar_type())[t];
  const torch::Tensor sqrt_alpha_prod = alpha_prod.pow(0.5);
  const torch::Tensor sqrt_one_minus_alpha_prod = (1 - alpha_prod).pow(0.5);
  return sqrt_alpha_prod * original + sqrt_one_minus_alpha_prod * noise.to(original.device());
}

torch::Tensor Scheduler::train_sigmas() const {
  return ((1 - alphas_cumprod_tensor_) / alphas_cumprod_tensor_).pow(0.5);
}

int Scheduler::index_for_timestep(double timestep) const {
  std::vector<int> indices;
  for (size_t i = 0; i < timesteps_.size(); ++i) {
    if (timesteps_[i] == timestep) indices.push_back(static_cast<int>(i));
  }
  if (indices.empty()) {
    std::ostringstream message;
    message << name() << " scheduler: timestep " << timestep
            << " is not in the schedule set by set_timesteps";
    throw Error(message.str());
  }
  // "The sigma index that is taken for the very first step is always the
  // second index (or the last index if there is only 1)", so that img2img
  // starting mid-schedule does not skip a sigma.
  return indices.size() > 1 ? indices[1] : indices[0];
}

std::vector<std::string> scheduler_names() { return sampler_names(); }

std::unique_ptr<Scheduler> make_scheduler(Sampler sampler, const SchedulerConfig& config) {
  switch (sampler) {
    case Sampler::ddim:
      return std::make_unique<DDIMScheduler>(config);
    case Sampler::ddpm:
      return std::make_unique<DDPMScheduler>(config);
    case Sampler::euler:
      return std::make_unique<EulerDiscreteScheduler>(config);
    case Sampler::euler_a:
      return std::make_unique<EulerAncestralDiscreteScheduler>(config);
    case Sampler::heun:
      return std::make_unique<HeunDiscreteScheduler>(config);
    case Sampler::lms:
      return std::make_unique<LMSDiscreteScheduler>(config);
    case Sampler::pndm:
      return std::make_unique<PNDMScheduler>(config);
    case Sampler::lcm:
      return std::make_unique<LCMScheduler>(config);
    case Sampler::unipc:
      return std::make_unique<UniPCMultistepScheduler>(config);
    case Sampler::dpmpp_2m:
    case Sampler::dpmpp_2m_karras:
      // "DPM++ 2M Karras" asks for Karras sigmas by name; plain "DPM++ 2M" keeps
      // the config's choice (--scheduler karras, or the model's own config).
      return std::make_unique<DPMSolverMultistepScheduler>(
          DPMSolverMultistepScheduler::dpmpp_2m_config(
              config, sampler == Sampler::dpmpp_2m_karras || config.use_karras_sigmas));
  }
  throw Error("unknown sampler");
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const SchedulerConfig& config) {
  // The diffusers class keeps the config's own solver settings.
  if (to_lower(name) == "dpmsolvermultistepscheduler" || to_lower(name) == "dpmsolvermultistep")
    return std::make_unique<DPMSolverMultistepScheduler>(config);
  return make_scheduler(parse_sampler(name), config);
}

}  // namespace sdgen
