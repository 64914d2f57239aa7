// img2img against diffusers' StableDiffusionImg2ImgPipeline (golden img2img.*),
// through the library and through the sdgen binary.

#include <filesystem>

#include <nlohmann/json.hpp>

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

GenerationRequest golden_request() {
  const auto meta = nlohmann::json::parse(test::golden_meta())["img2img"];
  GenerationRequest r;
  r.prompt = meta["prompt"].get<std::string>();
  r.negative_prompt = "";  // meta: null
  r.strength = meta["strength"].get<double>();
  r.steps = meta["steps"].get<int>();
  r.cfg_scale = meta["guidance"].get<double>();
  r.seed = meta["seed"].get<uint64_t>();
  r.sampler = parse_sampler(meta["sampler"].get<std::string>());
  r.init_image = test::golden("img2img.init_u8");
  r.height = static_cast<int>(r.init_image.size(0));
  r.width = static_cast<int>(r.init_image.size(1));
  return r;
}

TEST(Img2Img, MatchesDiffusers) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  int calls = 0;
  auto result =
      pipeline.generate(golden_request(), [&](const StepInfo& info, const torch::Tensor&) {
        EXPECT_EQ(info.total, 6);  // int(10 * 0.6) steps of the 10-step schedule
        ++calls;
      });
  EXPECT_EQ(calls, 6);
  const double err = test::max_abs_diff(result.images, test::golden("img2img.ddim.image"));
  std::cout << "[parity] img2img ddim strength 0.6: image max err " << err << std::endl;
  EXPECT_LT(err, 1e-4);
}

TEST(Img2Img, RejectsBadStrength) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  auto r = golden_request();
  for (double s : {0.0, -0.5, 1.5}) {
    r.strength = s;
    EXPECT_THROW(pipeline.validate(r), Error) << s;
  }
  r.strength = 0.05;  // int(10 * 0.05) == 0 steps
  EXPECT_THROW(pipeline.validate(r), Error);
}

TEST(Img2Img, ThroughTheBinary) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("img2img");
  write_png(dir + "/init.png", test::golden("img2img.init_u8"));
  std::string log;
  const std::string sdgen =
      test::binary_dir() + "/sdgen --dtype fp32 --model '" + test::tiny_model_dir() + "'";
  ASSERT_EQ(test::run(sdgen + " -p 'a red fox in the snow' --init-image " + dir +
                          "/init.png --strength 0.6 --steps 10 --seed 3 -q -o " + dir + "/out.png",
                      &log),
            0)
      << log;
  const auto expected = (test::golden("img2img.ddim.image")[0] * 255).round().to(torch::kUInt8);
  auto png = read_png(dir + "/out.png");
  const double diff = test::max_abs_diff(png.pixels, expected);
  std::cout << "[parity] img2img through sdgen: max 8-bit difference " << diff << std::endl;
  EXPECT_LE(diff, 1.0);
  EXPECT_NE(png.text[0].second.find("Denoising strength: 0.6"), std::string::npos);

  // A different size is resized, and said so.
  ASSERT_EQ(test::run(sdgen + " -p fox --init-image " + dir +
                          "/init.png --steps 2 -W 96 -H 64 -o " + dir + "/wide.png",
                      &log),
            0)
      << log;
  EXPECT_NE(log.find("resizing the init image from 64x64 to 96x64"), std::string::npos) << log;
  EXPECT_EQ(read_png(dir + "/wide.png").pixels.sizes(), (std::vector<int64_t>{64, 96, 3}));

  // An alpha channel, a non-PNG and a bad strength fail with one line and no output.
  write_png(dir + "/rgba.png", torch::zeros({64, 64, 4}, torch::kUInt8));
  fs::copy_file(test::golden_path(), dir + "/fake.png");
  for (const auto& [args, words] : std::vector<std::pair<std::string, std::string>>{
           {"--init-image " + dir + "/rgba.png", "alpha channel"},
           {"--init-image " + dir + "/fake.png", "not a PNG"},
           {"--init-image " + dir + "/missing.png", "missing.png"},
           {"--init-image " + dir + "/init.png --strength 1.5", "--strength"}}) {
    EXPECT_NE(test::run(sdgen + " -p fox --steps 2 -q " + args + " -o " + dir + "/bad.png", &log),
              0);
    EXPECT_NE(log.find(words), std::string::npos) << args << ": " << log;
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
    EXPECT_FALSE(fs::exists(dir + "/bad.png"));
  }
}

}  // namespace
}  // namespace sdgen
