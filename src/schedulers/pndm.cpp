#include "sdgen/schedulers/pndm.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "sdgen/error.h"

namespace sdgen {

PNDMScheduler::PNDMScheduler(SchedulerConfig config) : Scheduler(std::move(config)) {
  if (config_.prediction_type != "epsilon" && config_.prediction_type != "v_prediction") {
    throw Error("pndm scheduler: prediction_type '" + config_.prediction_type +
                "' is not supported (expected epsilon or v_prediction)");
  }
  // diffusers PNDMScheduler.__init__: alphas_cumprod "before" t = 0.
  final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0f : alpha_prod(0);
}

void PNDMScheduler::set_timesteps(int num_inference_steps) {
  // diffusers PNDMScheduler.set_timesteps. `_timesteps` ascends; the
  // linspace/leading/trailing values are DDIM's.
  std::vector<double> spaced = spaced_timesteps(num_inference_steps);
  std::vector<int64_t> ts(spaced.rbegin(), spaced.rend());
  const int64_t n = static_cast<int64_t>(ts.size());
  prk_timesteps_.clear();
  plms_timesteps_.clear();
  if (config_.skip_prk_steps) {
    // concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]: PLMS repeats the
    // second timestep (crowsonkb's PLMS, CompVis/latent-diffusion#51).
    std::vector<int64_t> plms(ts.begin(), ts.end() - 1);
    if (n >= 2) plms.push_back(ts[static_cast<size_t>(n - 2)]);
    plms.push_back(ts.back());
    plms_timesteps_.assign(plms.rbegin(), plms.rend());
  } else {
    // prk = ts[-4:].repeat(2) + tile([0, ratio // 2], 4);
    // prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1]; plms = ts[:-3][::-1].
    const int64_t half = config_.num_train_timesteps / num_inference_steps / 2;
    const int64_t pndm_order = 4;
    std::vector<int64_t> prk;
    for (int64_t i = std::max<int64_t>(0, n - pndm_order); i < n; ++i) {
      prk.push_back(ts[static_cast<size_t>(i)]);
      prk.push_back(ts[static_cast<size_t>(i)] + half);
    }
    // np.tile([0, half], 4) has 8 entries; numpy broadcasting needs
    // prk to have 8 too, i.e. at least 4 inference steps.
    if (prk.size() != 2 * static_cast<size_t>(pndm_order)) {
      throw Error(
          "pndm scheduler: without skip_prk_steps at least 4 inference steps are needed, "
          "found " +
          std::to_string(num_inference_steps));
    }
    std::vector<int64_t> doubled;
    for (size_t i = 0; i + 1 < prk.size(); ++i) {
      doubled.push_back(prk[i]);
      doubled.push_back(prk[i]);
    }
    std::vector<int64_t> trimmed(doubled.begin() + 1, doubled.end() - 1);
    prk_timesteps_.assign(trimmed.rbegin(), trimmed.rend());
    for (int64_t i = n - 4; i >= 0; --i) plms_timesteps_.push_back(ts[static_cast<size_t>(i)]);
  }
  timesteps_.clear();
  for (int64_t t : prk_timesteps_) timesteps_.push_back(static_cast<double>(t));
  for (int64_t t : plms_timesteps_) timesteps_.push_back(static_cast<double>(t));
  num_inference_steps_ = num_inference_steps;
  ets_.clear();
  counter_ = 0;
  cur_model_output_ = torch::Tensor();
  cur_sample_ = torch::Tensor();
}

torch::Tensor PNDMScheduler::step(const torch::Tensor& model_output, double timestep,
                                  const torch::Tensor& sample, Generator& generator) {
  // diffusers PNDMScheduler.step.
  (void)generator;
  check_ready();
  const auto t = static_cast<int64_t>(std::llround(timestep));
  if (static_cast<double>(t) != timestep) {
    throw Error("pndm scheduler: timestep " + std::to_string(timestep) + " is not an integer");
  }
  if (counter_ < static_cast<int>(prk_timesteps_.size()) && !config_.skip_prk_steps) {
    return step_prk(model_output, t, sample);
  }
  return step_plms(model_output, t, sample);
}

torch::Tensor PNDMScheduler::step_prk(const torch::Tensor& model_output, int64_t timestep,
                                      const torch::Tensor& sample) {
  // diffusers PNDMScheduler.step_prk: the Runge-Kutta warm-up, formula (13)
  // of arXiv 2202.09778.
  const int64_t diff_to_prev =
      counter_ % 2 ? 0 : config_.num_train_timesteps / num_inference_steps_ / 2;
  const int64_t prev_timestep = timestep - diff_to_prev;
  timestep = prk_timesteps_.at(static_cast<size_t>(counter_ / 4 * 4));

  torch::Tensor output = model_output;
  // 1/6 and 1/3 are Python floats, applied as float32 scalars.
  const auto accumulate = [&](double weight) {
    const torch::Tensor term = model_output * weight;
    cur_model_output_ = cur_model_output_.defined() ? cur_model_output_ + term : term;
  };
  if (counter_ % 4 == 0) {
    accumulate(1.0 / 6);
    ets_.push_back(model_output);
    cur_sample_ = sample;
  } else if ((counter_ - 1) % 4 == 0) {
    accumulate(1.0 / 3);
  } else if ((counter_ - 2) % 4 == 0) {
    accumulate(1.0 / 3);
  } else {
    const torch::Tensor term = model_output * (1.0 / 6);
    output = cur_model_output_.defined() ? cur_model_output_ + term : term;
    cur_model_output_ = torch::Tensor();
  }
  const torch::Tensor cur_sample = cur_sample_.defined() ? cur_sample_ : sample;
  torch::Tensor prev = prev_sample(cur_sample, timestep, prev_timestep, output);
  ++counter_;
  return prev;
}

torch::Tensor PNDMScheduler::step_plms(const torch::Tensor& model_output, int64_t timestep,
                                       const torch::Tensor& sample) {
  // diffusers PNDMScheduler.step_plms: linear multistep, formula (12) of
  // arXiv 2202.09778 (Adams-Bashforth of orders 1 to 4).
  if (!config_.skip_prk_steps && ets_.size() < 3) {
    throw Error("pndm scheduler: PLMS steps need the 12 Runge-Kutta steps first");
  }
  const int64_t ratio = config_.num_train_timesteps / num_inference_steps_;
  int64_t prev_timestep = timestep - ratio;
  if (counter_ != 1) {
    if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
    ets_.push_back(model_output);
  } else {
    prev_timestep = timestep;
    timestep = timestep + ratio;
  }

  torch::Tensor output;
  torch::Tensor x = sample;
  const size_t n = ets_.size();
  if (n == 1 && counter_ == 0) {
    output = model_output;
    cur_sample_ = sample;
  } else if (n == 1 && counter_ == 1) {
    output = (model_output + ets_.back()) / 2;
    x = cur_sample_;
    cur_sample_ = torch::Tensor();
  } else if (n == 2) {
    output = (ets_[n - 1] * 3 - ets_[n - 2]) / 2;
  } else if (n == 3) {
    output = (ets_[n - 1] * 23 - ets_[n - 2] * 16 + ets_[n - 3] * 5) / 12;
  } else {
    output =
        (ets_[n - 1] * 55 - ets_[n - 2] * 59 + ets_[n - 3] * 37 - ets_[n - 4] * 9) * (1.0 / 24);
  }
  if (!x.defined()) {
    throw Error("pndm scheduler: internal state lost (step() order differs from timesteps())");
  }
  torch::Tensor prev = prev_sample(x, timestep, prev_timestep, output);
  ++counter_;
  return prev;
}

torch::Tensor PNDMScheduler::prev_sample(const torch::Tensor& sample, int64_t timestep,
                                         int64_t prev_timestep, torch::Tensor model_output) const {
  // diffusers PNDMScheduler._get_prev_sample with float32 0-dim scalars.
  if (timestep < 0 || timestep >= config_.num_train_timesteps) {
    throw Error("pndm scheduler: timestep " + std::to_string(timestep) + " is outside [0, " +
                std::to_string(config_.num_train_timesteps) + ")");
  }
  const float alpha_prod_t = alpha_prod(timestep);
  const float alpha_prod_t_prev =
      prev_timestep >= 0 ? alpha_prod(prev_timestep) : final_alpha_cumprod_;
  const float beta_prod_t = 1.0f - alpha_prod_t;
  const float beta_prod_t_prev = 1.0f - alpha_prod_t_prev;
  if (config_.prediction_type == "v_prediction") {
    model_output = model_output * std::sqrt(alpha_prod_t) + sample * std::sqrt(beta_prod_t);
  }
  // (alpha_{t-delta} - alpha_t) / (sqrt(alpha_t) * (sqrt(alpha_{t-delta}) +
  // sqrt(alpha_t))) = sqrt(alpha_{t-delta}) / sqrt(alpha_t) - 1, plus 1.
  const float sample_coeff = std::sqrt(alpha_prod_t_prev / alpha_prod_t);
  // denominator of e_theta(x_t, t) in formula (9)
  const float model_output_denom_coeff = alpha_prod_t * std::sqrt(beta_prod_t_prev) +
                                         std::sqrt(alpha_prod_t * beta_prod_t * alpha_prod_t_prev);
  // full formula (9)
  const torch::Tensor correction =
      (model_output * (alpha_prod_t_prev - alpha_prod_t)) / model_output_denom_coeff;
  return sample * sample_coeff - correction;
}

}  // namespace sdgen
