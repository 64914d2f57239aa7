// Multistep samplers (DPM++ 2M, DPM++ 2M Karras, UniPC): schedules and the
// tiny pipeline step by step against diffusers (golden sched.* / pipe.*).

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/schedulers/dpm_solver_multistep.h"
#include "sdgen/schedulers/unipc_multistep.h"
#include "test_util.h"

namespace sdgen {
namespace {

const std::vector<std::string> kSamplers = {"dpmpp_2m", "dpmpp_2m_karras", "unipc"};
const std::vector<int> kStepCounts = {1, 4, 10, 20, 50};

SchedulerConfig sd15_config() {
  return SchedulerConfig::from_json(
      read_json_file(test::tiny_model_dir() + "/scheduler/scheduler_config.json"));
}

std::vector<double> to_vector(const torch::Tensor& t) {
  const torch::Tensor d = t.to(torch::kFloat64).contiguous().flatten();
  return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const double scale = std::max(std::abs(b[i]), 1e-30);
    worst = std::max(worst, std::abs(a[i] - b[i]) / (b[i] == 0 ? 1.0 : scale));
  }
  return worst;
}

TEST(SamplerDPM, SchedulesMatchDiffusers) {
  SDGEN_REQUIRE_SHARED();
  const SchedulerConfig config = sd15_config();
  for (const auto& name : kSamplers) {
    double worst_sigma = 0;
    for (int steps : kStepCounts) {
      const std::string prefix = "sched." + name + "." + std::to_string(steps);
      auto scheduler = make_scheduler(name, config);
      EXPECT_EQ(scheduler->name(), name);
      scheduler->set_timesteps(steps);
      const auto expected_t = to_vector(test::golden(prefix + ".timesteps"));
      ASSERT_EQ(scheduler->timesteps().size(), expected_t.size()) << prefix;
      // Integer timesteps: exact.
      EXPECT_EQ(scheduler->timesteps(), expected_t) << prefix;
      const auto expected_s = to_vector(test::golden(prefix + ".sigmas"));
      ASSERT_EQ(scheduler->sigmas().size(), expected_s.size()) << prefix;
      const double rel = max_rel_diff(scheduler->sigmas(), expected_s);
      worst_sigma = std::max(worst_sigma, rel);
      EXPECT_LE(rel, 1e-6) << prefix;
      const double init = to_vector(test::golden(prefix + ".init_noise_sigma"))[0];
      EXPECT_LE(std::abs(scheduler->init_noise_sigma() - init) / init, 1e-6) << prefix;
    }
    std::cout << "[parity] " << name << " schedules: sigmas max rel err " << worst_sigma
              << std::endl;
  }
}

TEST(SamplerDPM, NamesAndAliases) {
  const SchedulerConfig config;
  EXPECT_EQ(make_scheduler("DPM++ 2M", config)->name(), "dpmpp_2m");
  EXPECT_EQ(make_scheduler("dpm++ 2m karras", config)->name(), "dpmpp_2m_karras");
  EXPECT_EQ(make_scheduler("DPMSolverMultistepScheduler", config)->name(), "dpmpp_2m");
  EXPECT_EQ(make_scheduler("UniPC", config)->name(), "unipc");
  EXPECT_EQ(make_scheduler("UniPCMultistepScheduler", config)->name(), "unipc");
  const auto names = scheduler_names();
  for (const auto& name : kSamplers) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  }
  // dpmpp_2m forces the A1111 meaning even when the config says otherwise.
  SchedulerConfig other = config;
  other.raw = {{"solver_order", 3}, {"algorithm_type", "dpmsolver"}};
  auto dpm = make_scheduler("dpmpp_2m", other);
  auto* typed = dynamic_cast<DPMSolverMultistepScheduler*>(dpm.get());
  ASSERT_NE(typed, nullptr);
  EXPECT_EQ(typed->solver_order(), 2);
  EXPECT_EQ(typed->algorithm_type(), "dpmsolver++");
}

TEST(SamplerDPM, RejectsBadUse) {
  SchedulerConfig config;
  Generator generator(0);
  const torch::Tensor x = torch::zeros({1, 4, 8, 8});
  for (const auto& name : kSamplers) {
    auto scheduler = make_scheduler(name, config);
    EXPECT_THROW(scheduler->step(x, 999, x, generator), Error) << name;
    EXPECT_THROW(scheduler->set_timesteps(0), Error) << name;
    scheduler->set_timesteps(2);
    // A timestep that is not in the schedule.
    EXPECT_THROW(scheduler->step(x, 3, x, generator), Error) << name;
  }
  SchedulerConfig bad = config;
  bad.raw = {{"algorithm_type", "nope"}};
  EXPECT_THROW(DPMSolverMultistepScheduler{bad}, Error);
  bad.raw = {{"solver_type", "nope"}};
  EXPECT_THROW(DPMSolverMultistepScheduler{bad}, Error);
  EXPECT_THROW(UniPCMultistepScheduler{bad}, Error);
  bad.raw = {{"algorithm_type", "dpmsolver"}};  // needs final_sigmas_type sigma_min
  EXPECT_THROW(DPMSolverMultistepScheduler{bad}, Error);
  bad.timestep_spacing = "sideways";
  bad.raw = nlohmann::json::object();
  EXPECT_THROW(UniPCMultistepScheduler(bad).set_timesteps(4), Error);
}

// With the data prediction of a perfect denoiser (model_output = the true
// noise of a fixed x_0), every DPM-Solver++ and UniPC update must land on
// x_0 after the last step, whatever the order and schedule.
TEST(SamplerDPM, RecoversCleanSampleFromExactNoise) {
  SchedulerConfig base;
  base.timestep_spacing = "trailing";
  base.steps_offset = 0;
  const torch::Tensor x0 = torch::linspace(-1, 1, 64).reshape({1, 4, 4, 4});
  const torch::Tensor eps = torch::cos(torch::arange(64).to(torch::kFloat32)).reshape({1, 4, 4, 4});
  for (const auto& name : kSamplers) {
    auto scheduler = make_scheduler(name, base);
    scheduler->set_timesteps(8);
    Generator generator(0);
    const double sigma0 = scheduler->sigmas()[0];
    const double alpha = 1 / std::sqrt(sigma0 * sigma0 + 1);
    torch::Tensor x = alpha * x0 + alpha * sigma0 * eps;
    for (double t : scheduler->timesteps()) x = scheduler->step(eps, t, x, generator);
    const double err = test::max_abs_diff(x, x0);
    EXPECT_LT(err, 1e-4) << name;
  }
}

TEST(SamplerDPM, DPMPP2MPipelineMatchesDiffusers) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("dpmpp_2m");
}

TEST(SamplerDPM, DPMPP2MKarrasPipelineMatchesDiffusers) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("dpmpp_2m_karras");
}

TEST(SamplerDPM, UniPCPipelineMatchesDiffusers) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("unipc");
}

}  // namespace
}  // namespace sdgen
