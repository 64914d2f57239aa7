// Library-level end-to-end parity with diffusers on the tiny model: every
// step's latents and the final images (golden pipe.* tensors).

#include <nlohmann/json.hpp>

#include "sdgen/error.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "test_util.h"

namespace sdgen {
namespace {

TEST(Pipeline, DDIMMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("ddim");
}

TEST(Pipeline, DDPMMatchesDiffusersStepByStep) {
  SDGEN_REQUIRE_SHARED();
  test::check_golden_pipeline("ddpm");
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
  Pipeline pipeline(test::tiny_model());
  auto result = pipeline.generate(r);
  const auto expected = test::golden("pipe_batch2_clipskip.ddim.image");
  const double err = test::max_abs_diff(result.images, expected);
  std::cout << "[parity] batch2 64x96 clip skip: image max err " << err << std::endl;
  EXPECT_LT(err, 1e-4);
}

TEST(Pipeline, RejectsInvalidRequests) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  auto r = test::golden_request("ddim");
  r.width = 60;
  EXPECT_THROW(pipeline.validate(r), Error);
  r = test::golden_request("ddim");
  r.steps = 0;
  EXPECT_THROW(pipeline.validate(r), Error);
  r = test::golden_request("ddim");
  r.cfg_scale = -1;
  EXPECT_THROW(pipeline.validate(r), Error);
  r = test::golden_request("ddim");
  r.clip_skip = 99;
  EXPECT_THROW(pipeline.validate(r), Error);
  EXPECT_NO_THROW(pipeline.validate(test::golden_request("ddim")));
}

}  // namespace
}  // namespace sdgen
