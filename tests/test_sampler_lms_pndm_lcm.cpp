// LMS, PNDM (PLMS) and LCM samplers against diffusers: schedules for every
// stored step count (golden sched.*) and the full tiny pipeline step by step
// (golden pipe.*).

#include <algorithm>
#include <cmath>
#include <iostream>
#include <vector>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/schedulers/lcm.h"
#include "sdgen/schedulers/lms.h"
#include "sdgen/schedulers/pndm.h"
#include "sdgen/schedulers/scheduler.h"
#include "test_util.h"

namespace sdgen {
namespace {

const int kStepCounts[] = {1, 4, 10, 20, 50};

SchedulerConfig sd15_config() {
  return SchedulerConfig::from_json(
      read_json_file(test::tiny_model_dir() + "/scheduler/scheduler_config.json"));
}

std::vector<double> to_vector(const torch::Tensor& t) {
  const torch::Tensor d = t.to(torch::kFloat64).contiguous().flatten();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

double max_rel_diff(const std::vector<double>& got, const std::vector<double>& want) {
  double worst = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double scale = std::max(std::fabs(want[i]), 1e-30);
    worst = std::max(worst, std::fabs(got[i] - want[i]) / scale);
  }
  return worst;
}

// (a) timesteps, sigmas and init_noise_sigma after set_timesteps(steps).
void check_schedules(const std::string& name, bool exact_timesteps, bool has_sigmas) {
  const SchedulerConfig config = sd15_config();
  double worst_t = 0, worst_s = 0, worst_init = 0;
  for (int steps : kStepCounts) {
    const std::string key = "sched." + name + "." + std::to_string(steps);
    auto scheduler = make_scheduler(name, config);
    ASSERT_EQ(scheduler->name(), name);
    scheduler->set_timesteps(steps);
    const auto want_t = to_vector(test::golden(key + ".timesteps"));
    ASSERT_EQ(scheduler->timesteps().size(), want_t.size()) << key;
    if (exact_timesteps) {
      for (size_t i = 0; i < want_t.size(); ++i) {
        EXPECT_EQ(scheduler->timesteps()[i], want_t[i]) << key << " index " << i;
      }
    }
    const double dt = max_rel_diff(scheduler->timesteps(), want_t);
    EXPECT_LE(dt, 1e-9) << key;
    worst_t = std::max(worst_t, dt);
    if (has_sigmas) {
      const auto want_s = to_vector(test::golden(key + ".sigmas"));
      ASSERT_EQ(scheduler->sigmas().size(), want_s.size()) << key;
      const double ds = max_rel_diff(scheduler->sigmas(), want_s);
      EXPECT_LE(ds, 1e-6) << key;
      worst_s = std::max(worst_s, ds);
    } else {
      EXPECT_TRUE(scheduler->sigmas().empty()) << key;
    }
    const double want_init = test::golden(key + ".init_noise_sigma").item<double>();
    const double di = std::fabs(scheduler->init_noise_sigma() - want_init) / want_init;
    EXPECT_LE(di, 1e-6) << key;
    worst_init = std::max(worst_init, di);
  }
  std::cout << "[parity] " << name << " schedules: timesteps max rel err " << worst_t
            << ", sigmas max rel err " << worst_s << ", init_noise_sigma max rel err " << worst_init
            << std::endl;
}

TEST(SamplerLMS, SchedulesMatchDiffusers) {
  SDGEN_REQUIRE_SHARED();
  check_schedules("lms", /*exact_timesteps=*/false, /*has_sigmas=*/true);
}

TEST(SamplerPNDM, SchedulesMatchDiffusers) {
  SDGEN_REQUIRE_SHARED();
  check_schedules("pndm", /*exact_timesteps=*/true, /*has_sigmas=*/false);
}

TEST(SamplerLCM, SchedulesMatchDiffusers) {
  SDGEN_REQUIRE_SHARED();
  check_schedules("lcm", /*exact_timesteps=*/true, /*has_sigmas=*/false);
}

TEST(SamplerLMS, PipelineMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("lms");
}

TEST(SamplerPNDM, PipelineMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("pndm");
}

TEST(SamplerLCM, PipelineMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("lcm");
}

// Checks that need no reference data.

SchedulerConfig default_config() {
  SchedulerConfig c;
  c.skip_prk_steps = true;
  return c;
}

TEST(SamplerLMS, FirstCoefficientIsSigmaStep) {
  // With order 1 the coefficient is the integral of 1: sigma_{t+1} - sigma_t.
  LMSDiscreteScheduler lms(default_config());
  lms.set_timesteps(10);
  const auto& s = lms.sigmas();
  for (int t = 0; t < 10; ++t) {
    EXPECT_NEAR(lms.lms_coefficient(1, t, 0), s[t + 1] - s[t], 1e-12) << t;
  }
  // Lagrange basis polynomials sum to 1, so the coefficients of one step
  // sum to the step's sigma difference.
  for (int order = 2; order <= 4; ++order) {
    const int t = 5;
    double sum = 0;
    for (int c = 0; c < order; ++c) sum += lms.lms_coefficient(order, t, c);
    EXPECT_NEAR(sum, s[t + 1] - s[t], 1e-5 * std::fabs(s[t + 1] - s[t])) << order;
  }
}

TEST(SamplerLMS, KarrasSigmasDescendToSigmaMin) {
  SchedulerConfig c = default_config();
  c.use_karras_sigmas = true;
  LMSDiscreteScheduler lms(c);
  lms.set_timesteps(10);
  ASSERT_EQ(lms.sigmas().size(), 11u);
  ASSERT_EQ(lms.timesteps().size(), 10u);
  for (size_t i = 1; i < 10; ++i) {
    EXPECT_LT(lms.sigmas()[i], lms.sigmas()[i - 1]);
    EXPECT_LT(lms.timesteps()[i], lms.timesteps()[i - 1]);
  }
  EXPECT_EQ(lms.sigmas().back(), 0.0);
  // The Karras ramp keeps the end points of the interpolated schedule: the
  // first and last timesteps map back to (about) 901 and 1 ("leading").
  EXPECT_NEAR(lms.timesteps().front(), 901.0, 1e-3);
  EXPECT_NEAR(lms.timesteps().back(), 1.0, 1e-3);
}

TEST(SamplerPNDM, PLMSRepeatsSecondTimestep) {
  PNDMScheduler pndm(default_config());
  pndm.set_timesteps(10);
  const std::vector<double> want = {901, 801, 801, 701, 601, 501, 401, 301, 201, 101, 1};
  EXPECT_EQ(pndm.timesteps(), want);
  SchedulerConfig c = default_config();
  c.skip_prk_steps = false;
  PNDMScheduler prk(c);
  prk.set_timesteps(10);
  EXPECT_EQ(prk.num_prk_timesteps(), 12u);
  EXPECT_EQ(prk.timesteps().size(), 19u);
  EXPECT_EQ(prk.timesteps()[0], 901);
  EXPECT_EQ(prk.timesteps()[1], 851);
  EXPECT_THROW(prk.set_timesteps(3), Error);
}

TEST(SamplerLCM, RejectsMoreStepsThanOriginalSchedule) {
  LCMScheduler lcm(default_config());
  EXPECT_EQ(lcm.original_inference_steps(), 50);
  EXPECT_THROW(lcm.set_timesteps(51), Error);
  lcm.set_timesteps(4);
  const std::vector<double> want = {999, 759, 499, 259};
  EXPECT_EQ(lcm.timesteps(), want);
}

TEST(Samplers, A1111NamesResolve) {
  const SchedulerConfig c = default_config();
  EXPECT_EQ(make_scheduler("LMS", c)->name(), "lms");
  EXPECT_EQ(make_scheduler("PLMS", c)->name(), "pndm");
  EXPECT_EQ(make_scheduler("PNDMScheduler", c)->name(), "pndm");
  EXPECT_EQ(make_scheduler("LCM", c)->name(), "lcm");
  EXPECT_EQ(make_scheduler("LMSDiscreteScheduler", c)->name(), "lms");
  const auto names = scheduler_names();
  for (const char* n : {"lms", "pndm", "lcm"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  }
}

}  // namespace
}  // namespace sdgen
