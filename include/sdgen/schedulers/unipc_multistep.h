#pragma once

// UniPC (Zhao et al. 2023, arXiv 2302.04867): a multistep predictor (UniP)
// with a corrector (UniC) that reuses the next model evaluation, following
// diffusers' UniPCMultistepScheduler (scheduling_unipc_multistep.py).
//
// Algorithm-specific settings come from config.raw with diffusers' names and
// defaults: solver_order (2), predict_x0 (true), solver_type ("bh2"),
// lower_order_final (true), disable_corrector ([]), final_sigmas_type
// ("zero"), use_exponential_sigmas (false), sigma_min / sigma_max (unset);
// use_karras_sigmas is config.use_karras_sigmas. solver_p is not supported.

#include <string>
#include <vector>

#include "sdgen/schedulers/multistep.h"

namespace sdgen {

class UniPCMultistepScheduler : public MultistepScheduler {
 public:
  explicit UniPCMultistepScheduler(SchedulerConfig config);

  std::string name() const override { return "unipc"; }
  void set_timesteps(int num_inference_steps) override;
  // diffusers UniPCMultistepScheduler.step: corrects `sample` with this model
  // output (UniC), then predicts the next sample (UniP). Deterministic.
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;

  // diffusers convert_model_output: x_0 (predict_x0) or noise prediction.
  torch::Tensor convert_model_output(const torch::Tensor& model_output,
                                     const torch::Tensor& sample) const;

  const std::string& solver_type() const { return solver_type_; }

 private:
  // diffusers multistep_uni_p_bh_update.
  torch::Tensor uni_p_update(const torch::Tensor& sample, int order) const;
  // diffusers multistep_uni_c_bh_update (its this_sample only gives the device).
  torch::Tensor uni_c_update(const torch::Tensor& this_model_output,
                             const torch::Tensor& last_sample, int order) const;

  bool predict_x0_ = true;
  std::string solver_type_ = "bh2";
  std::vector<int> disable_corrector_;
  double sigma_min_ = -1;  // < 0: unset
  double sigma_max_ = -1;
  torch::Tensor last_sample_;
  int this_order_ = 0;
};

}  // namespace sdgen
