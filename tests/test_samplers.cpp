// Every sampler end to end through the sdgen binary (PNG vs diffusers'
// image_u8), img2img with every sampler, and v-prediction for every
// sampler's step function.

#include <filesystem>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/schedulers/scheduler.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

SchedulerConfig sd15_config() {
  // The SD1.5 scheduler config, as in the tiny model's scheduler_config.json.
  SchedulerConfig c;
  c.beta_start = 0.00085;
  c.beta_end = 0.012;
  c.beta_schedule = "scaled_linear";
  c.steps_offset = 1;
  c.timestep_spacing = "leading";
  c.raw = c.to_json();
  return c;
}

TEST(Samplers, EveryNameIsKnownWithItsA1111Alias) {
  const std::vector<std::pair<std::string, std::string>> aliases = {
      {"DDIM", "ddim"},         {"PLMS", "pndm"},
      {"Euler", "euler"},       {"Euler a", "euler_a"},
      {"Heun", "heun"},         {"LMS", "lms"},
      {"DPM++ 2M", "dpmpp_2m"}, {"DPM++ 2M Karras", "dpmpp_2m_karras"},
      {"UniPC", "unipc"},       {"LCM", "lcm"},
      {"ddpm", "ddpm"}};
  for (const auto& [alias, name] : aliases)
    EXPECT_EQ(make_scheduler(alias, sd15_config())->name(), name);
  EXPECT_EQ(scheduler_names().size(), aliases.size());
  try {
    make_scheduler("euler_b", sd15_config());
    FAIL();
  } catch (const Error& e) {
    for (const auto& n : scheduler_names())
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos);
  }
}

TEST(Samplers, KarrasScheduleType) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  GenerationRequest r;
  r.steps = 10;
  // "DPM++ 2M" + schedule type Karras is A1111's "DPM++ 2M Karras".
  r.sampler = Sampler::dpmpp_2m;
  r.schedule = SigmaSchedule::karras;
  const auto karras = pipeline.make_request_scheduler(r);
  EXPECT_EQ(karras->name(), "dpmpp_2m_karras");
  const auto expected = test::golden("sched.dpmpp_2m_karras.10.sigmas");
  ASSERT_EQ(static_cast<int64_t>(karras->sigmas().size()), expected.numel());
  for (size_t i = 0; i < karras->sigmas().size(); ++i)
    EXPECT_NEAR(karras->sigmas()[i], expected[static_cast<int64_t>(i)].item<double>(),
                1e-6 * std::max(1.0, karras->sigmas()[i]));
  for (const std::string name : {"euler", "heun", "lms", "unipc"}) {
    r.sampler = parse_sampler(name);
    r.schedule = SigmaSchedule::karras;
    const auto k = pipeline.make_request_scheduler(r)->sigmas();
    r.schedule = SigmaSchedule::normal;
    const auto n = pipeline.make_request_scheduler(r)->sigmas();
    EXPECT_NE(k, n) << name;
    for (size_t i = 1; i + 1 < k.size(); ++i)
      EXPECT_LE(k[i], k[i - 1]) << name;  // non-increasing (Heun repeats)
  }
}

TEST(Samplers, EveryGoldenImageThroughTheBinary) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("samplers");
  for (const auto& name : scheduler_names()) {
    const bool lcm = name == "lcm";
    const std::string args =
        lcm ? " --steps 4 --cfg-scale 1" : " -n 'blurry, low quality' --steps 10 --cfg-scale 7.5";
    const std::string out = dir + "/" + name + ".png";
    std::string log;
    ASSERT_EQ(
        test::run(test::binary_dir() + "/sdgen -q --threads 1 --dtype fp32 --model '" +
                      test::tiny_model_dir() +
                      "' -p 'a photograph of an astronaut riding a horse' --seed 42 -W 64 -H 64"
                      " --sampler " +
                      name + args + " -o " + out,
                  &log),
        0)
        << name << ": " << log;
    const auto got = read_png(out).pixels.unsqueeze(0);
    const double diff = test::max_abs_diff(got, test::golden("pipe." + name + ".image_u8"));
    std::cout << "[parity] sdgen --sampler " << name << ": max 8-bit difference " << diff
              << std::endl;
    EXPECT_LE(diff, 1.0) << name;
  }
}

TEST(Samplers, Img2ImgWorksWithEverySampler) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  for (const auto& name : scheduler_names()) {
    GenerationRequest r;
    r.prompt = "a red fox in the snow";
    r.steps = name == "lcm" ? 4 : 10;
    r.seed = 3;
    r.sampler = parse_sampler(name);
    r.strength = 0.6;
    r.init_image = test::golden("img2img.init_u8");
    r.width = r.height = 64;
    int calls = 0;
    auto result = pipeline.generate(r, [&](const StepInfo&, const torch::Tensor&) { ++calls; });
    // diffusers' get_timesteps: timesteps[t_start * order:], t_start = steps - int(steps *
    // strength) (Heun: 2 calls per step; PNDM: its schedule has one extra call).
    const auto scheduler = pipeline.make_request_scheduler(r);
    const int t_start = r.steps - static_cast<int>(r.steps * r.strength);
    EXPECT_EQ(calls, static_cast<int>(scheduler->timesteps().size()) - t_start * scheduler->order())
        << name;
    EXPECT_TRUE(torch::isfinite(result.images).all().item<bool>()) << name;
    // Starting from the init image, not from noise: the result stays near it.
    const auto init = test::golden("img2img.init_u8").to(torch::kFloat32) / 255;
    const double mean_change = (result.images[0] - init).abs().mean().item<double>();
    std::cout << "[img2img] " << name << ": mean change from the init image " << mean_change
              << std::endl;
    EXPECT_LT(mean_change, 0.35) << name;
  }
}

// v-prediction, derived by hand: for x0 and the noise level of the current
// timestep (alpha-bar a from the training schedule), the epsilon and v targets
// that describe the same x0 are
//   VP-scaled samples (x = sqrt(a) x0 + sqrt(1-a) eps): eps = (x - sqrt(a) x0) / sqrt(1-a)
//   k-diffusion samples (x = x0 + sigma eps, sigma^2 = (1-a)/a): eps = (x - x0) / sigma
//   v = sqrt(a) eps - sqrt(1-a) x0   (Salimans & Ho 2022, diffusers' get_velocity)
// so a v-prediction scheduler fed v must take exactly the steps an epsilon
// scheduler takes fed eps, for every sampler, multistep history included.
TEST(Samplers, VPredictionMatchesEpsilonForEverySampler) {
  for (const auto& name : scheduler_names()) {
    SchedulerConfig eps_config = sd15_config();
    SchedulerConfig v_config = sd15_config();
    v_config.prediction_type = "v_prediction";
    v_config.raw["prediction_type"] = "v_prediction";
    auto s_eps = make_scheduler(name, eps_config);
    auto s_v = make_scheduler(name, v_config);
    const int steps = name == "lcm" ? 4 : 6;
    s_eps->set_timesteps(steps);
    s_v->set_timesteps(steps);
    ASSERT_EQ(s_eps->timesteps(), s_v->timesteps()) << name;
    const bool k_diffusion = s_eps->init_noise_sigma() > 1.5;
    Generator g_eps(11), g_v(11), data(5);
    auto x_eps = data.randn({1, 4, 8, 8}) * s_eps->init_noise_sigma();
    auto x_v = x_eps.clone();
    double worst = 0;
    // PNDM (PLMS) combines the raw model outputs of several steps before it
    // converts v to epsilon with the current sample (diffusers' step_plms /
    // _get_prev_sample), so the two agree only on its first step.
    const size_t calls = name == "pndm" ? 1 : s_eps->timesteps().size();
    // The noise level of call i: the scheduler's own sigma where it keeps one
    // per call (Karras sigmas are not the training sigma of their rounded t).
    const auto& sigmas = s_eps->sigmas();
    const bool per_call_sigmas = sigmas.size() == s_eps->timesteps().size() + 1;
    for (size_t i = 0; i < calls; ++i) {
      const double t = s_eps->timesteps()[i];
      const double a = per_call_sigmas ? 1.0 / (1.0 + sigmas[i] * sigmas[i])
                                       : s_eps->alphas_cumprod()[static_cast<size_t>(t)];
      const auto x0 = data.randn({1, 4, 8, 8}).mul(0.5);
      const auto in = x_eps.to(torch::kDouble);
      torch::Tensor eps;
      if (k_diffusion) {
        eps = (in - x0.to(torch::kDouble)) / std::sqrt((1 - a) / a);
      } else {
        eps = (in - std::sqrt(a) * x0.to(torch::kDouble)) / std::sqrt(1 - a);
      }
      const auto v = std::sqrt(a) * eps - std::sqrt(1 - a) * x0.to(torch::kDouble);
      x_eps = s_eps->step(eps.to(torch::kFloat), t, x_eps, g_eps);
      x_v = s_v->step(v.to(torch::kFloat), t, x_v, g_v);
      worst = std::max(
          worst, test::max_abs_diff(x_eps, x_v) / std::max(1.0, x_eps.abs().max().item<double>()));
    }
    std::cout << "[v-pred] " << name << ": max relative difference " << worst << std::endl;
    EXPECT_LT(worst, 1e-5) << name;
  }
}

}  // namespace
}  // namespace sdgen
