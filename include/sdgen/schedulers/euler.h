#pragma once

// Euler sampler (Karras et al. 2022, arXiv 2206.00364, Algorithm 2), following
// diffusers' EulerDiscreteScheduler (scheduling_euler_discrete.py).

#include <limits>
#include <optional>
#include <string>

#include "sdgen/schedulers/sigma_scheduler.h"

namespace sdgen {

class EulerDiscreteScheduler : public SigmaScheduler {
 public:
  // Reads config.use_karras_sigmas and, from config.raw, the diffusers keys
  // interpolation_type (linear | log_linear), use_exponential_sigmas,
  // use_beta_sigmas (not supported: throws), sigma_min, sigma_max,
  // timestep_type (discrete | continuous) and final_sigmas_type (zero | sigma_min).
  explicit EulerDiscreteScheduler(SchedulerConfig config);

  std::string name() const override { return "euler"; }
  void set_timesteps(int num_inference_steps) override;
  // diffusers EulerDiscreteScheduler.step; noise is drawn from `generator`
  // only when churn is enabled (s_churn > 0 and s_tmin <= sigma <= s_tmax).
  torch::Tensor step(const torch::Tensor& model_output, double timestep,
                     const torch::Tensor& sample, Generator& generator) override;

  // The stochastic "churn" of Algorithm 2 (diffusers step's s_churn, s_tmin,
  // s_tmax, s_noise); off by default as in diffusers' pipelines.
  void set_churn(double s_churn, double s_tmin = 0.0,
                 double s_tmax = std::numeric_limits<double>::infinity(), double s_noise = 1.0);

 private:
  std::string interpolation_type_ = "linear";
  std::string timestep_type_ = "discrete";
  std::string final_sigmas_type_ = "zero";
  bool use_exponential_sigmas_ = false;
  std::optional<double> sigma_min_;
  std::optional<double> sigma_max_;
  double s_churn_ = 0.0;
  double s_tmin_ = 0.0;
  double s_tmax_ = std::numeric_limits<double>::infinity();
  double s_noise_ = 1.0;
};

}  // namespace sdgen
