// Library-level end-to-end parity with diffusers on the tiny model: every
// step's latents and the final images (golden pipe.* tensors).

#include <nlohmann/json.hpp>

#include "sdgen/error.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "test_util.h"

namespace sdgen {
namespace {

StableDiffusionModel& tiny_model() {
  static StableDiffusionModel model = [] {
    LoadOptions options;
    options.model_path = test::tiny_model_dir();
    return load_model(options);
  }();
  return model;
}

GenerationRequest golden_request(const std::string& sampler) {
  GenerationRequest r;
  r.prompt = "a photograph of an astronaut riding a horse";
  r.negative_prompt = "blurry, low quality";
  r.steps = 10;
  r.cfg_scale = 7.5;
  r.seed = 42;
  r.width = 64;
  r.height = 64;
  r.sampler = sampler;
  return r;
}

void check_sampler(const std::string& name) {
  auto& model = tiny_model();
  Pipeline pipeline(model);
  const auto expected_steps = test::golden("pipe." + name + ".latents_steps");
  std::vector<torch::Tensor> steps;
  auto result =
      pipeline.generate(golden_request(name), [&](const StepInfo&, const torch::Tensor& l) {
        steps.push_back(l.to(torch::kCPU, torch::kFloat32).clone());
      });
  ASSERT_EQ(static_cast<int64_t>(steps.size()), expected_steps.size(0));
  double worst = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const double d = test::max_abs_diff(steps[i], expected_steps[static_cast<int64_t>(i)]);
    worst = std::max(worst, d);
    EXPECT_LT(d, 1e-4) << name << " step " << i;
  }
  const double image_err =
      test::max_abs_diff(result.images, test::golden("pipe." + name + ".image"));
  const double u8_err =
      test::max_abs_diff(result.images_u8, test::golden("pipe." + name + ".image_u8"));
  std::cout << "[parity] " << name << ": latents max err " << worst << ", image max err "
            << image_err << ", u8 max diff " << u8_err << std::endl;
  EXPECT_LT(image_err, 1e-4);
  EXPECT_LE(u8_err, 1.0);
}

TEST(Pipeline, DDIMMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  check_sampler("ddim");
}

TEST(Pipeline, DDPMMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  check_sampler("ddpm");
}

TEST(Pipeline, Batch2NonSquareClipSkip) {
  SDGEN_REQUIRE_SHARED();
  const auto meta = nlohmann::json::parse(test::golden_meta())["pipe_batch2_clipskip"];
  GenerationRequest r;
  r.prompt = meta["prompt"].get<std::string>();
  r.negative_prompt = meta["negative"].get<std::string>();
  r.width = meta["width"].get<int>();
  r.height = meta["height"].get<int>();
  r.steps = meta["steps"].get<int>();
  r.cfg_scale = meta["guidance"].get<double>();
  r.seed = meta["seed"].get<uint64_t>();
  r.batch_size = meta["batch"].get<int>();
  r.clip_skip = 2;  // diffusers clip_skip=1 == A1111 "Clip skip: 2"
  Pipeline pipeline(tiny_model());
  auto result = pipeline.generate(r);
  const auto expected = test::golden("pipe_batch2_clipskip.ddim.image");
  const double err = test::max_abs_diff(result.images, expected);
  std::cout << "[parity] batch2 64x96 clip skip: image max err " << err << std::endl;
  EXPECT_LT(err, 1e-4);
}

TEST(Pipeline, RejectsInvalidRequests) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(tiny_model());
  auto r = golden_request("ddim");
  r.width = 60;
  EXPECT_THROW(pipeline.validate(r), Error);
  r = golden_request("ddim");
  r.steps = 0;
  EXPECT_THROW(pipeline.validate(r), Error);
  r = golden_request("ddim");
  r.cfg_scale = -1;
  EXPECT_THROW(pipeline.validate(r), Error);
  r = golden_request("ddim");
  r.clip_skip = 99;
  EXPECT_THROW(pipeline.validate(r), Error);
  EXPECT_NO_THROW(pipeline.validate(golden_request("ddim")));
}

}  // namespace
}  // namespace sdgen
