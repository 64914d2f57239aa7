// Euler, Euler ancestral and Heun against diffusers' EulerDiscreteScheduler,
// EulerAncestralDiscreteScheduler and HeunDiscreteScheduler: schedules for
// every stored step count (golden sched.*) and the full tiny pipeline step by
// step (golden pipe.*).

#include <algorithm>
#include <cmath>
#include <limits>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/schedulers/euler.h"
#include "sdgen/schedulers/euler_ancestral.h"
#include "sdgen/schedulers/heun.h"
#include "sdgen/schedulers/scheduler.h"
#include "test_util.h"

namespace sdgen {
namespace {

const char* const kSamplers[] = {"euler", "euler_a", "heun"};
const int kStepCounts[] = {1, 4, 10, 20, 50};

SchedulerConfig sd15_config() {
  return SchedulerConfig::from_json(
      read_json_file(test::tiny_model_dir() + "/scheduler/scheduler_config.json"));
}

std::vector<double> to_vector(const torch::Tensor& t) {
  const torch::Tensor d = t.to(torch::kFloat64).contiguous().view({-1});
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// Largest |a - b| / |b| (|a - b| where b == 0).
double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const double d = std::abs(a[i] - b[i]);
    worst = std::max(worst, b[i] == 0 ? d : d / std::abs(b[i]));
  }
  return worst;
}

TEST(SamplerEuler, SchedulesMatchDiffusers) {
  SDGEN_REQUIRE_SHARED();
  const SchedulerConfig config = sd15_config();
  for (const char* name : kSamplers) {
    double worst_t = 0, worst_sigma = 0, worst_init = 0;
    for (int steps : kStepCounts) {
      const std::string key = std::string("sched.") + name + "." + std::to_string(steps);
      auto scheduler = make_scheduler(name, config);
      scheduler->set_timesteps(steps);
      const auto timesteps = to_vector(test::golden(key + ".timesteps"));
      const auto sigmas = to_vector(test::golden(key + ".sigmas"));
      const double init = test::golden(key + ".init_noise_sigma").item<double>();
      ASSERT_EQ(scheduler->timesteps().size(), timesteps.size()) << key;
      ASSERT_EQ(scheduler->sigmas().size(), sigmas.size()) << key;
      const double dt = max_rel_diff(scheduler->timesteps(), timesteps);
      const double ds = max_rel_diff(scheduler->sigmas(), sigmas);
      const double di = std::abs(scheduler->init_noise_sigma() - init) / init;
      EXPECT_LE(dt, 1e-9) << key;
      EXPECT_LE(ds, 1e-6) << key;
      EXPECT_LE(di, 1e-6) << key;
      worst_t = std::max(worst_t, dt);
      worst_sigma = std::max(worst_sigma, ds);
      worst_init = std::max(worst_init, di);
    }
    std::cout << "[parity] " << name << " schedules: timesteps max rel err " << worst_t
              << ", sigmas max rel err " << worst_sigma << ", init_noise_sigma max rel err "
              << worst_init << std::endl;
  }
}

TEST(SamplerEuler, EulerPipelineMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("euler");
}

TEST(SamplerEuler, EulerAncestralPipelineMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("euler_a");
}

TEST(SamplerEuler, HeunPipelineMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("heun");
}

// The rest needs no reference data: the SD1.5 scheduler settings are the
// SchedulerConfig defaults.

TEST(SamplerEuler, NamesAndAliases) {
  const SchedulerConfig config;
  for (const std::string n : {"euler", "Euler", "EulerDiscreteScheduler"}) {
    EXPECT_EQ(make_scheduler(n, config)->name(), "euler") << n;
  }
  for (const std::string n : {"euler_a", "Euler a", "EULER A", "EulerAncestralDiscreteScheduler"}) {
    EXPECT_EQ(make_scheduler(n, config)->name(), "euler_a") << n;
  }
  for (const std::string n : {"heun", "Heun", "HeunDiscreteScheduler"}) {
    EXPECT_EQ(make_scheduler(n, config)->name(), "heun") << n;
  }
  const auto names = scheduler_names();
  for (const char* n : kSamplers) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
  EXPECT_EQ(make_scheduler("heun", config)->order(), 2);
  EXPECT_EQ(make_scheduler("euler", config)->order(), 1);
}

TEST(SamplerEuler, HeunAlternatesEulerAndCorrectionSteps) {
  HeunDiscreteScheduler heun{SchedulerConfig{}};
  heun.set_timesteps(3);
  // 2n - 1 model calls, 2n sigmas: [s0, s1, s1, s2, s2, 0].
  ASSERT_EQ(heun.timesteps().size(), 5u);
  ASSERT_EQ(heun.sigmas().size(), 6u);
  EXPECT_EQ(heun.timesteps()[1], heun.timesteps()[2]);
  EXPECT_EQ(heun.sigmas()[1], heun.sigmas()[2]);
  EXPECT_EQ(heun.sigmas().back(), 0.0);
  // With a model that predicts zero noise every step keeps x (dx/dsigma = 0)
  // and the state alternates first order / second order.
  Generator generator(0);
  const torch::Tensor x0 = torch::ones({1, 4, 2, 2});
  torch::Tensor x = x0;
  for (size_t i = 0; i < heun.timesteps().size(); ++i) {
    EXPECT_EQ(heun.state_in_first_order(), i % 2 == 0) << i;
    const double t = heun.timesteps()[i];
    (void)heun.scale_model_input(x, t);
    x = heun.step(torch::zeros_like(x), t, x, generator);
  }
  EXPECT_LT(test::max_abs_diff(x, x0), 1e-6);
  EXPECT_THROW(heun.step(torch::zeros_like(x), heun.timesteps().back(), x, generator), Error);
}

TEST(SamplerEuler, EulerStepIsTheOdeStep) {
  // With eps = c, one Euler step moves x by c * (sigma_1 - sigma_0).
  EulerDiscreteScheduler euler{SchedulerConfig{}};
  euler.set_timesteps(10);
  Generator generator(0);
  const torch::Tensor x = torch::full({1, 4, 2, 2}, 3.0);
  const torch::Tensor scaled = euler.scale_model_input(x, euler.timesteps()[0]);
  const double s0 = euler.sigmas()[0], s1 = euler.sigmas()[1];
  EXPECT_NEAR(scaled[0][0][0][0].item<double>(), 3.0 / std::sqrt(s0 * s0 + 1), 1e-5);
  const torch::Tensor eps = torch::full_like(x, 0.5);
  const torch::Tensor next = euler.step(eps, euler.timesteps()[0], x, generator);
  EXPECT_NEAR(next[0][0][0][0].item<double>(), 3.0 + 0.5 * (s1 - s0), 1e-5);
  EXPECT_EQ(euler.step_index(), 1);
}

TEST(SamplerEuler, EulerAncestralDrawsNoiseEveryStep) {
  // Same generator seed: the step's noise is the generator's next randn.
  EulerAncestralDiscreteScheduler euler_a{SchedulerConfig{}};
  euler_a.set_timesteps(4);
  const torch::Tensor x = torch::zeros({1, 4, 2, 2});
  Generator generator(5);
  const torch::Tensor out =
      euler_a.step(torch::zeros_like(x), euler_a.timesteps()[0], x, generator);
  Generator reference(5);
  const torch::Tensor noise = reference.randn({1, 4, 2, 2});
  const double s0 = euler_a.sigmas()[0], s1 = euler_a.sigmas()[1];
  const double sigma_up = std::sqrt(s1 * s1 * (s0 * s0 - s1 * s1) / (s0 * s0));
  EXPECT_LT(test::max_abs_diff(out, noise * sigma_up), 1e-5);
}

TEST(SamplerEuler, KarrasSigmasSpanTheInterpolatedRange) {
  // diffusers _convert_to_karras: sigma_max / sigma_min are the first and
  // last interpolated sigmas; _sigma_to_t maps them back to their timesteps.
  SchedulerConfig config;
  config.use_karras_sigmas = true;
  for (const char* name : {"euler", "heun"}) {
    auto plain = make_scheduler(name, SchedulerConfig{});
    plain->set_timesteps(10);
    auto karras = make_scheduler(name, config);
    karras->set_timesteps(10);
    const auto& s = karras->sigmas();
    const auto& t = karras->timesteps();
    EXPECT_NEAR(s.front(), plain->sigmas().front(), 1e-6 * s.front()) << name;
    EXPECT_NEAR(s[s.size() - 2], plain->sigmas()[plain->sigmas().size() - 2], 1e-6) << name;
    EXPECT_EQ(s.back(), 0.0) << name;
    for (size_t i = 1; i < s.size(); ++i) EXPECT_LE(s[i], s[i - 1]) << name << " " << i;
    EXPECT_NEAR(t.front(), 901.0, 1e-2) << name;
    EXPECT_NEAR(t.back(), 1.0, 1e-2) << name;
    // Karras spacing is denser near sigma_min than the plain schedule.
    // (Heun holds every sigma after the first twice.)
    const size_t back = std::string(name) == "heun" ? 4 : 3;
    EXPECT_LT(s[s.size() - back], plain->sigmas()[plain->sigmas().size() - back]) << name;
  }
}

TEST(SamplerEuler, TimestepSpacingsAndPrediction) {
  SchedulerConfig config;
  config.timestep_spacing = "linspace";
  config.steps_offset = 0;
  EulerDiscreteScheduler euler(config);
  euler.set_timesteps(4);
  // np.linspace(0, 999, 4, dtype=float32)[::-1]
  ASSERT_EQ(euler.timesteps().size(), 4u);
  EXPECT_EQ(euler.timesteps()[0], 999.0);
  EXPECT_EQ(euler.timesteps()[1], 666.0);
  EXPECT_EQ(euler.timesteps()[3], 0.0);
  // "linspace" / "trailing": init_noise_sigma is the max sigma itself.
  EXPECT_EQ(euler.init_noise_sigma(), euler.sigmas()[0]);
  euler.set_timesteps(7);  // 999 / 6 = 166.5: float timesteps stay fractional
  EXPECT_EQ(euler.timesteps()[1], static_cast<double>(static_cast<float>(5 * 166.5)));

  config.timestep_spacing = "trailing";
  EulerAncestralDiscreteScheduler trailing(config);
  trailing.set_timesteps(4);
  EXPECT_EQ(trailing.timesteps(), (std::vector<double>{999, 749, 499, 249}));

  SchedulerConfig bad;
  bad.prediction_type = "sample";
  EXPECT_THROW(EulerAncestralDiscreteScheduler{bad}, Error);
  SchedulerConfig beta;
  beta.raw = nlohmann::json{{"use_beta_sigmas", true}};
  EXPECT_THROW(EulerDiscreteScheduler{beta}, Error);
  SchedulerConfig spacing;
  spacing.timestep_spacing = "uniform";
  EulerDiscreteScheduler odd(spacing);
  EXPECT_THROW(odd.set_timesteps(10), Error);
  // step() before set_timesteps is an error, not a crash.
  EulerDiscreteScheduler fresh{SchedulerConfig{}};
  Generator generator(0);
  const torch::Tensor x = torch::zeros({1, 4, 2, 2});
  EXPECT_THROW(fresh.step(x, 901, x, generator), Error);
}

TEST(SamplerEuler, VPredictionMatchesEpsilonOnTheSameDenoised) {
  // For v-prediction, x0 = c_skip * x + c_out * v with c_skip = 1 / (s^2 + 1),
  // c_out = -s / sqrt(s^2 + 1). Pick v so that x0 equals the epsilon case.
  SchedulerConfig eps_config;
  SchedulerConfig v_config;
  v_config.prediction_type = "v_prediction";
  EulerDiscreteScheduler a(eps_config), b(v_config);
  a.set_timesteps(10);
  b.set_timesteps(10);
  Generator generator(0);
  const torch::Tensor x = torch::randn({1, 4, 2, 2}, torch::kFloat64).to(torch::kFloat32);
  const torch::Tensor eps = torch::randn({1, 4, 2, 2}, torch::kFloat64).to(torch::kFloat32);
  const double s = a.sigmas()[0];
  const torch::Tensor x0 = x - s * eps;
  const torch::Tensor v = (x0 - x / (s * s + 1)) / (-s / std::sqrt(s * s + 1));
  const torch::Tensor ra = a.step(eps, a.timesteps()[0], x, generator);
  const torch::Tensor rb = b.step(v, b.timesteps()[0], x, generator);
  EXPECT_LT(test::max_abs_diff(ra, rb), 1e-4);
}

}  // namespace
}  // namespace sdgen
