#pragma once

// What DPM-Solver(++) and UniPC share, as diffusers' UniPCMultistepScheduler
// copies it from DPMSolverMultistepScheduler: the VP sigma schedule (float32
// sigmas from the training table, optionally Karras or exponential, the last
// one 0 or sigma_min), the step index, the conversion of a model output to an
// x_0 or noise prediction, the history of converted outputs, and add_noise.
// Each solver keeps its own settings, set_timesteps and updates.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

class MultistepScheduler : public Scheduler {
 public:
  // diffusers add_noise of both: the sigma at the step index (begin_index
  // before the first step), alpha_t * x_0 + sigma_t * noise.
  torch::Tensor add_noise(const torch::Tensor& original, const torch::Tensor& noise,
                          double timestep) const override;

  int solver_order() const { return solver_order_; }
  // float32 sigmas [n + 1] as diffusers holds them.
  const torch::Tensor& sigmas_tensor() const { return sigmas_tensor_; }

 protected:
  // With config.rescale_betas_zero_snr the last alphas_cumprod becomes 2**-24
  // ("close to 0 without being 0 so first sigma is not inf"); before
  // set_timesteps the schedule is every training timestep, descending.
  explicit MultistepScheduler(SchedulerConfig config);

  // Throws Error ("<what> scheduler: ...") for the config keys neither solver
  // supports (use_beta_sigmas, use_flow_sigmas) and for Karras together with
  // exponential sigmas.
  void check_sigma_options(const std::string& what) const;
  // Throws Error unless final_sigmas_type_ is "zero" or "sigma_min".
  void check_final_sigmas_type(const std::string& what) const;

  // The float32 training sigmas ((1 - a) / a) ** 0.5 in training order, as
  // np.array(...) holds them.
  std::vector<float> sigma_table() const;
  // np.interp at integer timesteps: the table values.
  static std::vector<double> table_sigmas(const std::vector<double>& timesteps,
                                          const std::vector<float>& table);
  // diffusers _convert_to_karras (config.use_karras_sigmas) or
  // _convert_to_exponential between sigma_min and sigma_max.
  std::vector<double> karras_or_exponential(double sigma_min, double sigma_max, int steps) const;
  // _sigma_to_t of each sigma, rounded (`round`) or truncated as torch's
  // .to(int64) does.
  static std::vector<double> sigma_timesteps(const std::vector<double>& sigmas,
                                             const std::vector<float>& log_sigmas, bool round);
  // The end of set_timesteps: sigmas (float64) stored as float32 with
  // .astype(np.float32), the timesteps, and the solver state reset.
  void set_schedule(const std::vector<double>& sigmas, std::vector<double> timesteps);

  // (alpha_t, sigma_t) of sigmas_tensor_[index] (diffusers _sigma_to_alpha_sigma_t).
  std::pair<torch::Tensor, torch::Tensor> alpha_sigma_at(int64_t index) const;
  // convert_model_output of both: the x_0 prediction for the configured
  // prediction_type (`eps`: the noise part of the model output), thresholded
  // when config.thresholding.
  torch::Tensor predicted_x0(const torch::Tensor& model_output, const torch::Tensor& eps,
                             const torch::Tensor& sample, const torch::Tensor& alpha_t,
                             const torch::Tensor& sigma_t) const;
  // The noise prediction for the configured prediction_type (not thresholded).
  torch::Tensor predicted_epsilon(const torch::Tensor& model_output, const torch::Tensor& eps,
                                  const torch::Tensor& sample, const torch::Tensor& alpha_t,
                                  const torch::Tensor& sigma_t) const;
  // The start of step: set_timesteps was called and the step index is set
  // (diffusers _init_step_index: begin_index, else the timestep's position).
  void begin_step(double timestep);
  // model_outputs = model_outputs[1:] + [converted].
  void push_model_output(const torch::Tensor& converted);

  int solver_order_ = 2;
  bool lower_order_final_ = true;
  bool use_exponential_sigmas_ = false;
  std::string final_sigmas_type_ = "zero";
  torch::Tensor sigmas_tensor_;  // float32 [n + 1]
  std::vector<torch::Tensor> model_outputs_;
  int lower_order_nums_ = 0;
};

// diffusers DPMSolverMultistepScheduler.set_timesteps, timestep_spacing part
// (also copied into UniPCMultistepScheduler.set_timesteps):
// num_inference_steps + 1 points with the last (t = 0) dropped, descending.
// `last_timestep` is num_train_timesteps unless lambda_min_clipped cuts it.
std::vector<double> multistep_spaced_timesteps(const SchedulerConfig& config, int steps,
                                               int64_t last_timestep);

}  // namespace sdgen
