// Scheduler base, DDIM and DDPM against diffusers' schedules (golden) and
// against hand computations of diffusers' formulas in double precision.

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/schedulers/ddim.h"
#include "sdgen/schedulers/ddpm.h"
#include "sdgen/schedulers/scheduler.h"
#include "test_util.h"

namespace {

using sdgen::DDIMScheduler;
using sdgen::DDPMScheduler;
using sdgen::Generator;
using sdgen::SchedulerConfig;
using sdgen::test::golden;
using sdgen::test::max_abs_diff;

// The SD1.5 scheduler config (what the tiny model ships), without ../shared.
SchedulerConfig sd15_config() {
  SchedulerConfig config;
  config.num_train_timesteps = 1000;
  config.beta_start = 0.00085;
  config.beta_end = 0.012;
  config.beta_schedule = "scaled_linear";
  config.steps_offset = 1;
  config.set_alpha_to_one = false;
  config.clip_sample = false;
  config.prediction_type = "epsilon";
  config.timestep_spacing = "leading";
  return config;
}

std::vector<double> to_vector(const torch::Tensor& t) {
  const torch::Tensor d = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

std::vector<double> spaced(const std::string& spacing, int steps, int offset = 0) {
  SchedulerConfig config = sd15_config();
  config.timestep_spacing = spacing;
  config.steps_offset = offset;
  DDIMScheduler scheduler(config);
  scheduler.set_timesteps(steps);
  return scheduler.timesteps();
}

// Random [1, 4, 8, 8] tensors for the step tests.
struct StepInputs {
  torch::Tensor sample, model_output;
};
StepInputs step_inputs(uint64_t seed = 3) {
  Generator generator(seed);
  StepInputs in;
  in.sample = generator.randn({1, 4, 8, 8}) * 2.0;
  in.model_output = generator.randn({1, 4, 8, 8});
  return in;
}

TEST(Schedulers, TinyModelConfigMatchesGoldenSchedules) {
  SDGEN_REQUIRE_SHARED();
  const SchedulerConfig config = SchedulerConfig::from_json(
      sdgen::read_json_file(sdgen::test::tiny_model_dir() + "/scheduler/scheduler_config.json"));
  for (const std::string name : {"ddim", "ddpm"}) {
    for (int steps : {1, 4, 10, 20, 50}) {
      const std::string key = "sched." + name + "." + std::to_string(steps);
      SCOPED_TRACE(key);
      auto scheduler = sdgen::make_scheduler(name, config);
      scheduler->set_timesteps(steps);
      EXPECT_EQ(scheduler->timesteps(), to_vector(golden(key + ".timesteps")));
      EXPECT_EQ(scheduler->init_noise_sigma(), golden(key + ".init_noise_sigma").item<double>());
      EXPECT_EQ(scheduler->num_inference_steps(), steps);
      EXPECT_TRUE(scheduler->sigmas().empty());
    }
  }
}

TEST(Schedulers, LeadingSpacing) {
  // (arange(n) * (1000 // n))[::-1] + steps_offset
  EXPECT_EQ(spaced("leading", 10, 1),
            (std::vector<double>{901, 801, 701, 601, 501, 401, 301, 201, 101, 1}));
  EXPECT_EQ(spaced("leading", 3, 1), (std::vector<double>{667, 334, 1}));
  EXPECT_EQ(spaced("leading", 7, 1), (std::vector<double>{853, 711, 569, 427, 285, 143, 1}));
  EXPECT_EQ(spaced("leading", 4, 0), (std::vector<double>{750, 500, 250, 0}));
}

TEST(Schedulers, TrailingSpacing) {
  // round(arange(1000, 0, -1000 / n)) - 1, numpy's float arange.
  EXPECT_EQ(spaced("trailing", 10),
            (std::vector<double>{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
  EXPECT_EQ(spaced("trailing", 3), (std::vector<double>{999, 666, 332}));
  EXPECT_EQ(spaced("trailing", 7), (std::vector<double>{999, 856, 713, 570, 428, 285, 142}));
  EXPECT_EQ(spaced("trailing", 1), (std::vector<double>{999}));
  // n = 48: numpy's arange gives 937.4999999999999 (not 937.5) at i = 3, and
  // 62.5 - style halves round to even.
  const std::vector<double> t48 = spaced("trailing", 48);
  ASSERT_EQ(t48.size(), 48u);
  EXPECT_EQ(std::vector<double>(t48.begin(), t48.begin() + 6),
            (std::vector<double>{999, 978, 957, 936, 916, 895}));
  EXPECT_EQ(t48.back(), 20);
  // n = 61: numpy yields a 62nd value that rounds to -1; we keep 61.
  const std::vector<double> t61 = spaced("trailing", 61);
  ASSERT_EQ(t61.size(), 61u);
  EXPECT_EQ(t61.back(), 15);
}

TEST(Schedulers, LinspaceSpacing) {
  // linspace(0, 999, n).round()[::-1], numpy rounds halves to even.
  EXPECT_EQ(spaced("linspace", 10),
            (std::vector<double>{999, 888, 777, 666, 555, 444, 333, 222, 111, 0}));
  EXPECT_EQ(spaced("linspace", 3), (std::vector<double>{999, 500, 0}));  // 499.5 -> 500
  EXPECT_EQ(spaced("linspace", 4), (std::vector<double>{999, 666, 333, 0}));
  EXPECT_EQ(spaced("linspace", 7), (std::vector<double>{999, 832, 666, 500, 333, 166, 0}));
  EXPECT_EQ(spaced("linspace", 1), (std::vector<double>{0}));
}

TEST(Schedulers, BadStepCountsAndSpacingsThrow) {
  DDIMScheduler scheduler(sd15_config());
  EXPECT_THROW(scheduler.set_timesteps(0), sdgen::Error);
  EXPECT_THROW(scheduler.set_timesteps(1001), sdgen::Error);
  const StepInputs in = step_inputs();
  Generator generator(0);
  EXPECT_THROW(scheduler.step(in.model_output, 901, in.sample, generator), sdgen::Error);
  SchedulerConfig config = sd15_config();
  config.timestep_spacing = "sideways";
  DDIMScheduler bad(config);
  EXPECT_THROW(bad.set_timesteps(10), sdgen::Error);
  config = sd15_config();
  config.beta_schedule = "quadratic";
  EXPECT_THROW(DDIMScheduler{config}, sdgen::Error);
  scheduler.set_timesteps(10);
  EXPECT_THROW(scheduler.step(in.model_output, 1000, in.sample, generator), sdgen::Error);
  EXPECT_THROW(scheduler.step(in.model_output, 900.5, in.sample, generator), sdgen::Error);
}

TEST(Schedulers, BetaSchedules) {
  SchedulerConfig config = sd15_config();
  DDIMScheduler scaled(config);
  const auto& betas = scaled.betas();
  ASSERT_EQ(betas.size(), 1000u);
  EXPECT_NEAR(betas.front(), 0.00085, 1e-9);
  EXPECT_NEAR(betas.back(), 0.012, 1e-9);
  const double root = std::sqrt(0.00085) + 500 * (std::sqrt(0.012) - std::sqrt(0.00085)) / 999;
  EXPECT_NEAR(betas[500], root * root, 1e-9);
  // alphas_cumprod are float32 values (float32 cumprod: libtorch versions
  // differ in the last bits); their product follows the betas.
  const auto& alphas_cumprod = scaled.alphas_cumprod();
  double product = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) {
    product *= 1.0 - betas[i];
    EXPECT_NEAR(alphas_cumprod[i], product, 2e-6 * product + 1e-9) << "t = " << i;
    EXPECT_EQ(alphas_cumprod[i], static_cast<double>(static_cast<float>(alphas_cumprod[i])));
  }
  EXPECT_NEAR(alphas_cumprod.back(), 0.0047, 1e-4);  // SD1.5's well-known terminal value

  config.beta_schedule = "linear";
  config.beta_start = 0.0001;
  config.beta_end = 0.02;
  DDIMScheduler linear(config);
  EXPECT_NEAR(linear.betas()[999], 0.02, 1e-9);
  EXPECT_NEAR(linear.betas()[1], 0.0001 + (0.02 - 0.0001) / 999, 1e-9);

  config.beta_schedule = "squaredcos_cap_v2";
  DDIMScheduler cosine(config);
  const auto alpha_bar = [](double t) {
    return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2);
  };
  EXPECT_NEAR(cosine.betas()[0], 1 - alpha_bar(0.001) / alpha_bar(0.0), 1e-9);
  EXPECT_NEAR(cosine.betas()[999], 0.999, 1e-6);  // capped at max_beta

  config = sd15_config();
  config.trained_betas = std::vector<double>(1000, 0.01);
  DDIMScheduler trained(config);
  EXPECT_NEAR(trained.alphas_cumprod()[1], 0.99 * 0.99, 1e-7);
  config.trained_betas = {0.1, 0.2};
  EXPECT_THROW(DDIMScheduler{config}, sdgen::Error);
}

TEST(Schedulers, RescaleBetasZeroSnr) {
  SchedulerConfig config = sd15_config();
  DDIMScheduler plain(config);
  config.rescale_betas_zero_snr = true;
  DDIMScheduler rescaled(config);
  EXPECT_EQ(rescaled.alphas_cumprod().back(), 0.0);  // zero terminal SNR
  EXPECT_NEAR(rescaled.alphas_cumprod().front(), plain.alphas_cumprod().front(), 1e-6);
  // sqrt(alphas_cumprod) is shifted and scaled linearly.
  const double s0 = std::sqrt(plain.alphas_cumprod()[0]);
  const double sT = std::sqrt(plain.alphas_cumprod()[999]);
  const double s = std::sqrt(plain.alphas_cumprod()[500]);
  EXPECT_NEAR(std::sqrt(rescaled.alphas_cumprod()[500]), (s - sT) * s0 / (s0 - sT), 1e-5);
}

// diffusers DDIMScheduler.step with eta = 0, epsilon prediction, in double.
torch::Tensor ddim_reference(const torch::Tensor& eps, const torch::Tensor& x, double a_t,
                             double a_prev) {
  const torch::Tensor xd = x.to(torch::kFloat64), ed = eps.to(torch::kFloat64);
  const torch::Tensor x0 = (xd - std::sqrt(1 - a_t) * ed) / std::sqrt(a_t);
  return (std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * ed).to(torch::kFloat32);
}

TEST(Ddim, StepMatchesHandComputation) {
  DDIMScheduler scheduler(sd15_config());
  scheduler.set_timesteps(10);
  const auto& ac = scheduler.alphas_cumprod();
  const StepInputs in = step_inputs();
  Generator generator(11);
  const torch::Tensor out = scheduler.step(in.model_output, 901, in.sample, generator);
  const double err =
      max_abs_diff(out, ddim_reference(in.model_output, in.sample, ac[901], ac[801]));
  EXPECT_LT(err, 1e-5);
  std::cout << "[ ddim ] step t=901 max |err| = " << err << "\n";
  // Last step: prev_timestep = 1 - 100 < 0 -> final_alpha_cumprod = alphas_cumprod[0].
  EXPECT_FLOAT_EQ(scheduler.final_alpha_cumprod(), static_cast<float>(ac[0]));
  const torch::Tensor last = scheduler.step(in.model_output, 1, in.sample, generator);
  EXPECT_LT(max_abs_diff(last, ddim_reference(in.model_output, in.sample, ac[1], ac[0])), 1e-5);
  // eta = 0 never touches the generator.
  Generator fresh(11);
  EXPECT_TRUE(torch::equal(generator.randn({4}), fresh.randn({4})));

  SchedulerConfig config = sd15_config();
  config.set_alpha_to_one = true;
  DDIMScheduler to_one(config);
  to_one.set_timesteps(10);
  EXPECT_EQ(to_one.final_alpha_cumprod(), 1.0f);
  const torch::Tensor last_one = to_one.step(in.model_output, 1, in.sample, generator);
  EXPECT_LT(max_abs_diff(last_one, ddim_reference(in.model_output, in.sample, ac[1], 1.0)), 1e-5);
}

TEST(Ddim, VPredictionAndSamplePrediction) {
  const StepInputs in = step_inputs(4);
  Generator generator(0);
  SchedulerConfig config = sd15_config();
  config.prediction_type = "v_prediction";
  DDIMScheduler v(config);
  v.set_timesteps(20);  // step ratio 50: 951 -> 901
  const auto& ac = v.alphas_cumprod();
  const double a = ac[951], b = 1 - a;
  const torch::Tensor x = in.sample.to(torch::kFloat64), m = in.model_output.to(torch::kFloat64);
  // v = sqrt(a) eps - sqrt(b) x0  =>  x0 = sqrt(a) x - sqrt(b) v, eps = sqrt(a) v + sqrt(b) x.
  const torch::Tensor x0 = std::sqrt(a) * x - std::sqrt(b) * m;
  const torch::Tensor eps = std::sqrt(a) * m + std::sqrt(b) * x;
  const torch::Tensor expected = std::sqrt(ac[901]) * x0 + std::sqrt(1 - ac[901]) * eps;
  EXPECT_LT(max_abs_diff(v.step(in.model_output, 951, in.sample, generator), expected), 1e-5);

  config.prediction_type = "sample";
  DDIMScheduler s(config);
  s.set_timesteps(20);
  const torch::Tensor eps_s = (x - std::sqrt(a) * m) / std::sqrt(b);
  const torch::Tensor expected_s = std::sqrt(ac[901]) * m + std::sqrt(1 - ac[901]) * eps_s;
  EXPECT_LT(max_abs_diff(s.step(in.model_output, 951, in.sample, generator), expected_s), 1e-5);
}

TEST(Ddim, EtaDrawsNoiseFromTheGenerator) {
  DDIMScheduler scheduler(sd15_config(), 1.0);
  scheduler.set_timesteps(10);
  const auto& ac = scheduler.alphas_cumprod();
  const StepInputs in = step_inputs();
  Generator generator(21), replay(21);
  const torch::Tensor out = scheduler.step(in.model_output, 501, in.sample, generator);
  const torch::Tensor noise = replay.randn({1, 4, 8, 8}).to(torch::kFloat64);
  const double a_t = ac[501], a_prev = ac[401];
  // sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)), formula (16).
  const double sigma = std::sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev));
  const torch::Tensor x = in.sample.to(torch::kFloat64), e = in.model_output.to(torch::kFloat64);
  const torch::Tensor x0 = (x - std::sqrt(1 - a_t) * e) / std::sqrt(a_t);
  const torch::Tensor expected =
      std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev - sigma * sigma) * e + sigma * noise;
  const double err = max_abs_diff(out, expected);
  EXPECT_LT(err, 1e-5);
  std::cout << "[ ddim ] eta=1 step max |err| = " << err << "\n";
  // The generator advanced by exactly one draw of the sample's shape.
  EXPECT_TRUE(torch::equal(generator.randn({8}), replay.randn({8})));
  EXPECT_THROW(scheduler.set_eta(-0.5), sdgen::Error);
}

TEST(Ddim, ClipSampleAndDynamicThresholding) {
  // prediction_type "sample" makes x_0 the model output, so clipping is visible.
  SchedulerConfig config = sd15_config();
  config.prediction_type = "sample";
  config.clip_sample = true;
  config.clip_sample_range = 1.5;
  DDIMScheduler clip(config);
  clip.set_timesteps(10);
  const auto& ac = clip.alphas_cumprod();
  const StepInputs in = step_inputs(8);
  const torch::Tensor m = in.model_output * 3.0;  // well outside [-1.5, 1.5]
  Generator generator(0);
  const torch::Tensor x = in.sample.to(torch::kFloat64), md = m.to(torch::kFloat64);
  const double a = ac[501], ap = ac[401];
  // pred_epsilon comes from the unclipped x_0 (use_clipped_model_output = false).
  const torch::Tensor eps = (x - std::sqrt(a) * md) / std::sqrt(1 - a);
  const torch::Tensor expected = std::sqrt(ap) * md.clamp(-1.5, 1.5) + std::sqrt(1 - ap) * eps;
  EXPECT_LT(max_abs_diff(clip.step(m, 501, in.sample, generator), expected), 1e-5);

  // Dynamic thresholding on one [1, 1, 2, 2] x_0: |x_0| sorted {0.5, 1, 2, 3},
  // quantile 0.995 = 2 + 0.985 * (3 - 2) = 2.985 (linear interpolation).
  config.clip_sample = false;
  config.thresholding = true;
  config.sample_max_value = 5.0;
  DDIMScheduler threshold(config);
  threshold.set_timesteps(10);
  const torch::Tensor x0 = torch::tensor({0.5f, -3.0f, 2.0f, 1.0f}).reshape({1, 1, 2, 2});
  const torch::Tensor xs = torch::full({1, 1, 2, 2}, 0.25f);
  const double s = 2.985;
  const torch::Tensor x0_t = x0.to(torch::kFloat64).clamp(-s, s) / s;
  const torch::Tensor eps_t =
      (xs.to(torch::kFloat64) - std::sqrt(a) * x0.to(torch::kFloat64)) / std::sqrt(1 - a);
  const torch::Tensor expected_t = std::sqrt(ap) * x0_t + std::sqrt(1 - ap) * eps_t;
  EXPECT_LT(max_abs_diff(threshold.step(x0, 501, xs, generator), expected_t), 1e-5);
}

// diffusers DDPMScheduler.step without noise (the posterior mean), in double.
torch::Tensor ddpm_mean(const torch::Tensor& eps, const torch::Tensor& x, double a_t,
                        double a_prev) {
  const torch::Tensor xd = x.to(torch::kFloat64), ed = eps.to(torch::kFloat64);
  const double beta_t = 1 - a_t / a_prev;
  const torch::Tensor x0 = (xd - std::sqrt(1 - a_t) * ed) / std::sqrt(a_t);
  return (std::sqrt(a_prev) * beta_t / (1 - a_t)) * x0 +
         (std::sqrt(a_t / a_prev) * (1 - a_prev) / (1 - a_t)) * xd;
}

TEST(Ddpm, StepMatchesHandComputation) {
  DDPMScheduler scheduler(sd15_config());
  scheduler.set_timesteps(10);
  const auto& ac = scheduler.alphas_cumprod();
  const StepInputs in = step_inputs(5);
  Generator generator(42), replay(42);
  const torch::Tensor out = scheduler.step(in.model_output, 901, in.sample, generator);
  const double a_t = ac[901], a_prev = ac[801];
  // fixed_small: posterior variance (1 - a_prev) / (1 - a_t) * beta_t.
  const double variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev);
  const torch::Tensor noise = replay.randn({1, 4, 8, 8}).to(torch::kFloat64);
  const torch::Tensor expected =
      ddpm_mean(in.model_output, in.sample, a_t, a_prev) + std::sqrt(variance) * noise;
  const double err = max_abs_diff(out, expected);
  EXPECT_LT(err, 1e-5);
  std::cout << "[ ddpm ] step t=901 max |err| = " << err << "\n";

  // Last step of SD's schedule (t = 1 -> -1): alpha_prod_t_prev = 1, so the
  // variance is clamped to 1e-20, but diffusers still draws noise (t > 0).
  const torch::Tensor last = scheduler.step(in.model_output, 1, in.sample, generator);
  EXPECT_LT(max_abs_diff(last, ddpm_mean(in.model_output, in.sample, ac[1], 1.0)), 1e-5);
  replay.randn({1, 4, 8, 8});
  EXPECT_TRUE(torch::equal(generator.randn({8}), replay.randn({8})));

  // A step at t = 0 draws nothing.
  SchedulerConfig config = sd15_config();
  config.steps_offset = 0;
  DDPMScheduler zero(config);
  zero.set_timesteps(10);
  EXPECT_EQ(zero.timesteps().back(), 0);
  const torch::Tensor at_zero = zero.step(in.model_output, 0, in.sample, generator);
  EXPECT_LT(max_abs_diff(at_zero, ddpm_mean(in.model_output, in.sample, ac[0], 1.0)), 1e-5);
  EXPECT_TRUE(torch::equal(generator.randn({8}), replay.randn({8})));
}

TEST(Ddpm, VarianceTypes) {
  const StepInputs in = step_inputs(6);
  for (const std::string type : {"fixed_small_log", "fixed_large", "fixed_large_log"}) {
    SCOPED_TRACE(type);
    SchedulerConfig config = sd15_config();
    config.variance_type = type;
    DDPMScheduler scheduler(config);
    scheduler.set_timesteps(10);
    const auto& ac = scheduler.alphas_cumprod();
    const double a_t = ac[501], a_prev = ac[401], beta_t = 1 - a_t / a_prev;
    const double small = (1 - a_prev) / (1 - a_t) * beta_t;
    const double scale = type == "fixed_small_log" ? std::sqrt(small) : std::sqrt(beta_t);
    Generator generator(9), replay(9);
    const torch::Tensor out = scheduler.step(in.model_output, 501, in.sample, generator);
    const torch::Tensor expected = ddpm_mean(in.model_output, in.sample, a_t, a_prev) +
                                   scale * replay.randn({1, 4, 8, 8}).to(torch::kFloat64);
    EXPECT_LT(max_abs_diff(out, expected), 1e-5);
  }

  // learned_range: the model output carries [prediction, v]; the log variance
  // is frac * log(beta_t) + (1 - frac) * log(small), frac = (v + 1) / 2.
  SchedulerConfig config = sd15_config();
  config.variance_type = "learned_range";
  DDPMScheduler learned(config);
  learned.set_timesteps(10);
  const auto& ac = learned.alphas_cumprod();
  const double a_t = ac[501], a_prev = ac[401], beta_t = 1 - a_t / a_prev;
  const double small = (1 - a_prev) / (1 - a_t) * beta_t;
  const torch::Tensor v = torch::tanh(in.sample);
  Generator generator(9), replay(9);
  const torch::Tensor out =
      learned.step(torch::cat({in.model_output, v}, 1), 501, in.sample, generator);
  const torch::Tensor frac = (v.to(torch::kFloat64) + 1) / 2;
  const torch::Tensor log_var = frac * std::log(beta_t) + (1 - frac) * std::log(small);
  const torch::Tensor expected =
      ddpm_mean(in.model_output, in.sample, a_t, a_prev) +
      torch::exp(0.5 * log_var) * replay.randn({1, 4, 8, 8}).to(torch::kFloat64);
  EXPECT_LT(max_abs_diff(out, expected), 1e-5);
  // Without the variance channels a learned type cannot step.
  EXPECT_THROW(learned.step(in.model_output, 501, in.sample, generator), sdgen::Error);

  config.variance_type = "wobbly";
  EXPECT_THROW(DDPMScheduler{config}, sdgen::Error);
}

TEST(Ddpm, PreviousTimestep) {
  DDPMScheduler scheduler(sd15_config());
  // Before set_timesteps: the full 1000-step chain.
  EXPECT_EQ(scheduler.timesteps().size(), 1000u);
  EXPECT_EQ(scheduler.previous_timestep(500), 499);
  scheduler.set_timesteps(4);  // leading, offset 1: 751 501 251 1
  EXPECT_EQ(scheduler.timesteps(), (std::vector<double>{751, 501, 251, 1}));
  EXPECT_EQ(scheduler.previous_timestep(751), 501);
  EXPECT_EQ(scheduler.previous_timestep(1), -1);
  EXPECT_THROW(scheduler.previous_timestep(500), sdgen::Error);
  scheduler.set_custom_timesteps({900, 650, 300, 20});
  EXPECT_EQ(scheduler.previous_timestep(650), 300);
  EXPECT_EQ(scheduler.previous_timestep(20), -1);
  EXPECT_THROW(scheduler.set_custom_timesteps({100, 200}), sdgen::Error);
  EXPECT_THROW(scheduler.set_custom_timesteps({1000, 20}), sdgen::Error);

  // A custom schedule steps from 650 to 300.
  const StepInputs in = step_inputs(7);
  const auto& ac = scheduler.alphas_cumprod();
  Generator generator(1), replay(1);
  const torch::Tensor out = scheduler.step(in.model_output, 650, in.sample, generator);
  const double a_t = ac[650], a_prev = ac[300];
  const double variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev);
  const torch::Tensor expected =
      ddpm_mean(in.model_output, in.sample, a_t, a_prev) +
      std::sqrt(variance) * replay.randn({1, 4, 8, 8}).to(torch::kFloat64);
  EXPECT_LT(max_abs_diff(out, expected), 1e-5);
}

TEST(Schedulers, AddNoise) {
  DDIMScheduler scheduler(sd15_config());
  const StepInputs in = step_inputs(12);
  const auto& ac = scheduler.alphas_cumprod();
  const torch::Tensor out = scheduler.add_noise(in.sample, in.model_output, 601);
  const torch::Tensor expected = std::sqrt(ac[601]) * in.sample.to(torch::kFloat64) +
                                 std::sqrt(1 - ac[601]) * in.model_output.to(torch::kFloat64);
  EXPECT_LT(max_abs_diff(out, expected), 1e-6);
  EXPECT_EQ(out.scalar_type(), torch::kFloat32);
}

TEST(Schedulers, MakeSchedulerIsCaseInsensitive) {
  const SchedulerConfig config = sd15_config();
  EXPECT_EQ(sdgen::make_scheduler("ddim", config)->name(), "ddim");
  EXPECT_EQ(sdgen::make_scheduler("DDIM", config)->name(), "ddim");
  EXPECT_EQ(sdgen::make_scheduler("DdPm", config)->name(), "ddpm");
  EXPECT_EQ(sdgen::make_scheduler("DDPMScheduler", config)->name(), "ddpm");
  EXPECT_NE(dynamic_cast<DDIMScheduler*>(sdgen::make_scheduler("Ddim", config).get()), nullptr);
  const auto names = sdgen::scheduler_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "ddim"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "ddpm"), names.end());
}

TEST(Schedulers, UnknownSchedulerListsValidNames) {
  try {
    sdgen::make_scheduler("warp_drive", sd15_config());
    FAIL() << "expected sdgen::Error";
  } catch (const sdgen::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("warp_drive"), std::string::npos) << message;
    for (const auto& name : sdgen::scheduler_names()) {
      EXPECT_NE(message.find(name), std::string::npos) << message;
    }
  }
}

}  // namespace
