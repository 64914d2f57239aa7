#include "sdgen/schedulers/euler_ancestral.h"

#include <cmath>
#include <utility>

#include "sdgen/error.h"
#include "sigma_schedule.h"

namespace sdgen {

namespace ss = sigma_schedule;

EulerAncestralDiscreteScheduler::EulerAncestralDiscreteScheduler(SchedulerConfig config)
    : Scheduler(std::move(config)) {
  // diffusers EulerAncestralDiscreteScheduler.__init__.
  if (config_.prediction_type == "sample") {
    throw Error(
        "euler_a scheduler: prediction_type 'sample' is not supported (diffusers: "
        "\"prediction_type not implemented yet: sample\")");
  }
  torch::NoGradGuard no_grad;
  alphas_cumprod_ = alphas_cumprod_tensor_.clone();
  if (config_.rescale_betas_zero_snr) {
    // "Close to 0 without being 0 so first sigma is not inf": 2**-24.
    alphas_cumprod_[-1] = std::ldexp(1.0, -24);
  }
  const torch::Tensor sigmas = ((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5).flip(0);
  sigmas_t_ = torch::cat({sigmas, torch::zeros({1}, torch::kFloat32)});
  sigmas_ = ss::to_double_vector(sigmas_t_);
  for (int64_t t = config_.num_train_timesteps - 1; t >= 0; --t) {
    timesteps_.push_back(static_cast<double>(t));
  }
}

void EulerAncestralDiscreteScheduler::set_timesteps(int num_inference_steps) {
  // diffusers EulerAncestralDiscreteScheduler.set_timesteps.
  check_num_inference_steps(num_inference_steps);
  torch::NoGradGuard no_grad;
  timesteps_ = config_.timestep_spacing == "trailing"
                   ? spaced_timesteps(num_inference_steps)
                   : ss::k_timesteps(config_.timestep_spacing, config_.num_train_timesteps,
                                     num_inference_steps, config_.steps_offset);
  // np.interp over the float32 training sigmas, then [0.0] appended and
  // .astype(np.float32).
  const std::vector<float> train_sigmas =
      ss::to_float_vector(((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5));
  std::vector<double> sigmas = ss::interp_sigmas(timesteps_, train_sigmas);
  sigmas.push_back(0.0);
  sigmas_t_ = ss::to_float32_tensor(sigmas);
  sigmas_ = ss::to_double_vector(sigmas_t_);
  num_inference_steps_ = num_inference_steps;
  step_index_ = -1;
  begin_index_ = -1;
}

double EulerAncestralDiscreteScheduler::init_noise_sigma() const {
  return ss::init_noise_sigma(sigmas_t_, config_.timestep_spacing);
}

void EulerAncestralDiscreteScheduler::init_step_index(double timestep) {
  // diffusers EulerDiscreteScheduler._init_step_index.
  step_index_ = begin_index_ < 0 ? index_for_timestep(timestep) : begin_index_;
}

torch::Tensor EulerAncestralDiscreteScheduler::scale_model_input(const torch::Tensor& sample,
                                                                 double timestep) {
  // diffusers EulerAncestralDiscreteScheduler.scale_model_input.
  check_ready();
  if (step_index_ < 0) init_step_index(timestep);
  if (step_index_ >= sigmas_t_.size(0)) {
    throw Error("euler_a scheduler: scale_model_input called after the last step");
  }
  return ss::scale_by_sigma(sample, sigmas_t_[step_index_]);
}

torch::Tensor EulerAncestralDiscreteScheduler::step(const torch::Tensor& model_output,
                                                    double timestep, const torch::Tensor& sample,
                                                    Generator& generator) {
  // diffusers EulerAncestralDiscreteScheduler.step.
  check_ready();
  if (step_index_ < 0) init_step_index(timestep);
  if (step_index_ + 1 >= sigmas_t_.size(0)) {
    throw Error("euler_a scheduler: step() called more often than the " +
                std::to_string(timesteps_.size()) + " timesteps of the schedule");
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor sigma = sigmas_t_[step_index_];
  // "Upcast to avoid precision issues when computing prev_sample".
  const torch::Tensor x = sample.to(torch::kFloat32);

  // 1. predicted x_0 from the sigma-scaled prediction.
  torch::Tensor pred_original_sample;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = x - sigma * model_output;
  } else {
    // v_prediction: * c_out + input * c_skip.
    pred_original_sample =
        model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (x / (sigma.pow(2) + 1));
  }

  // Split the step into a deterministic part down to sigma_down and fresh
  // noise of size sigma_up (k-diffusion get_ancestral_step with eta = 1).
  const torch::Tensor sigma_from = sigmas_t_[step_index_];
  const torch::Tensor sigma_to = sigmas_t_[step_index_ + 1];
  const torch::Tensor sigma_up =
      (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
  const torch::Tensor sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);

  // 2. ODE derivative, Euler step to sigma_down, then the noise.
  const torch::Tensor derivative = (x - pred_original_sample) / sigma;
  const torch::Tensor dt = sigma_down - sigma;
  torch::Tensor prev_sample = x + derivative * dt;
  // randn_tensor(model_output.shape, dtype=model_output.dtype, generator):
  // drawn on the CPU generator, then moved to the device.
  const torch::Tensor noise =
      generator.randn(model_output.sizes(), model_output.scalar_type()).to(model_output.device());
  prev_sample = prev_sample + noise * sigma_up;
  prev_sample = prev_sample.to(model_output.scalar_type());
  ++step_index_;
  return prev_sample;
}

int EulerAncestralDiscreteScheduler::noise_index(double timestep) const {
  // diffusers add_noise's step_indices (see EulerDiscreteScheduler::noise_index).
  if (begin_index_ < 0) return index_for_timestep(timestep);
  if (step_index_ >= 0) return step_index_;
  return begin_index_;
}

torch::Tensor EulerAncestralDiscreteScheduler::add_noise(const torch::Tensor& original,
                                                         const torch::Tensor& noise,
                                                         double timestep) const {
  // diffusers EulerAncestralDiscreteScheduler.add_noise.
  return ss::add_noise_at(original, noise, sigmas_t_, noise_index(timestep));
}

}  // namespace sdgen
