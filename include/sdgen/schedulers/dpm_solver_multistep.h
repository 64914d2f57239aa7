#pragma once

// DPM-Solver / DPM-Solver++ multistep (Lu et al. 2022, arXiv 2206.00927 and
// 2211.01095), following diffusers' DPMSolverMultistepScheduler
// (scheduling_dpmsolver_multistep.py). With the defaults (dpmsolver++,
// solver_order 2, midpoint) this is A1111's "DPM++ 2M"; with
// use_karras_sigmas it is "DPM++ 2M Karras".
//
// Algorithm-specific settings come from config.raw with diffusers' names and
// defaults: solver_order (2), algorithm_type ("dpmsolver++"), solver_type
// ("midpoint"), lower_order_final (true), euler_at_final (false),
// final_sigmas_type ("zero"), lambda_min_clipped (-inf), use_lu_lambdas and
// use_exponential_sigmas (false); use_karras_sigmas is config.use_karras_sigmas.

#include <cstdint>
#include <string>
#include <vector>

#include "sdgen/schedulers/multistep.h"

namespace sdgen {

class DPMSolverMultistepScheduler : public MultistepScheduler {
 public:
  explicit DPMSolverMultistepScheduler(SchedulerConfig config);
  // "DPM++ 2M" (karras = false) or "DPM++ 2M Karras": config with
  // algorithm_type dpmsolver++, solver_order 2 and use_karras_sigmas = karras.
  static SchedulerConfig dpmpp_2m_config(SchedulerConfig config, bool karras);

  // "dpmpp_2m" or "dpmpp_2m_karras".
  std::string name() const override;
  void set_timesteps(int num_inference_steps) override;
  // diffusers DPMSolverMultistepScheduler.step. The sde-* algorithm types draw
  // one noise tensor of the sample's shape from `generator` per step.
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;

  // diffusers convert_model_output: x_0 prediction for dpmsolver++ types, noise
  // prediction for dpmsolver types, at the current step index.
  torch::Tensor convert_model_output(const torch::Tensor& model_output,
                                     const torch::Tensor& sample) const;

  const std::string& algorithm_type() const { return algorithm_type_; }
  const std::string& solver_type() const { return solver_type_; }

 private:
  torch::Tensor first_order_update(const torch::Tensor& model_output, const torch::Tensor& sample,
                                   const torch::Tensor& noise) const;
  torch::Tensor second_order_update(const torch::Tensor& sample, const torch::Tensor& noise) const;
  torch::Tensor third_order_update(const torch::Tensor& sample, const torch::Tensor& noise) const;

  std::string algorithm_type_ = "dpmsolver++";
  std::string solver_type_ = "midpoint";
  bool euler_at_final_ = false;
  bool use_lu_lambdas_ = false;
  double lambda_min_clipped_ = 0;  // set to -inf in the constructor
};

}  // namespace sdgen
