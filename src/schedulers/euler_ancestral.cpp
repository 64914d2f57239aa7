#include "sdgen/schedulers/euler_ancestral.h"

#include <utility>

#include "sdgen/error.h"
#include "sigma_schedule.h"

namespace sdgen {

namespace ss = sigma_schedule;

EulerAncestralDiscreteScheduler::EulerAncestralDiscreteScheduler(SchedulerConfig config)
    : SigmaScheduler(std::move(config), /*zero_snr_tweak=*/true) {
  // diffusers EulerAncestralDiscreteScheduler.__init__.
  if (config_.prediction_type == "sample") {
    throw Error(
        "euler_a scheduler: prediction_type 'sample' is not supported (diffusers: "
        "\"prediction_type not implemented yet: sample\")");
  }
  use_training_sigmas();
  for (int64_t t = config_.num_train_timesteps - 1; t >= 0; --t) {
    timesteps_.push_back(static_cast<double>(t));
  }
}

void EulerAncestralDiscreteScheduler::set_timesteps(int num_inference_steps) {
  // diffusers EulerAncestralDiscreteScheduler.set_timesteps: np.interp over
  // the float32 training sigmas, then [0.0] appended and .astype(np.float32).
  check_num_inference_steps(num_inference_steps);
  torch::NoGradGuard no_grad;
  std::vector<double> timesteps = k_diffusion_timesteps(num_inference_steps);
  std::vector<double> sigmas = interpolated_sigmas(timesteps);
  sigmas.push_back(0.0);
  set_schedule(ss::to_float32_tensor(sigmas), std::move(timesteps), num_inference_steps);
}

torch::Tensor EulerAncestralDiscreteScheduler::step(const torch::Tensor& model_output,
                                                    double timestep, const torch::Tensor& sample,
                                                    Generator& generator) {
  // diffusers EulerAncestralDiscreteScheduler.step.
  begin_step(timestep);
  if (step_index_ + 1 >= sigmas_t_.size(0)) throw step_overrun();
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

}  // namespace sdgen
