// Non-finite latents and images are reported, never written as a black PNG:
// a NaN weight in the UNet stops sampling at the first step with the step,
// sampler and dtype named; a NaN weight in the VAE stops after the decode;
// through the binary, nothing is written and the exit code is 1.

#include <filesystem>
#include <limits>
#include <map>

#include "sdgen/error.h"
#include "sdgen/pipeline.h"
#include "sdgen/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

StableDiffusionModel fresh_tiny_model() {
  LoadOptions o;
  o.model_path = test::tiny_model_dir();
  return load_model(o);
}

void poison(torch::nn::Module& module, const std::string& name) {
  torch::NoGradGuard no_grad;
  auto params = module.named_parameters();
  ASSERT_TRUE(params.contains(name)) << name;
  params[name].fill_(std::numeric_limits<float>::quiet_NaN());
}

std::string generate_error(StableDiffusionModel& model, GenerationRequest r, int* steps_seen) {
  Pipeline pipeline(model);
  try {
    pipeline.generate(r, [&](const StepInfo&, const torch::Tensor&) { ++*steps_seen; });
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(NonFinite, NaNLatentsStopAtTheStep) {
  SDGEN_REQUIRE_SHARED();
  auto model = fresh_tiny_model();
  poison(*model.unet, "conv_out.bias");
  auto r = test::golden_request("euler");
  r.steps = 5;
  int steps = 0;
  const std::string m = generate_error(model, r, &steps);
  EXPECT_EQ(steps, 0);  // stopped before the step callback of step 1
  for (const char* word :
       {"latents became NaN at step 1/5", "sampler euler", "fp32 on cpu", "no image written"})
    EXPECT_NE(m.find(word), std::string::npos) << "'" << word << "' missing from: " << m;
}

TEST(NonFinite, NaNImageAfterTheDecode) {
  SDGEN_REQUIRE_SHARED();
  auto model = fresh_tiny_model();
  poison(*model.vae, "decoder.conv_out.bias");
  auto r = test::golden_request("ddim");
  r.steps = 3;
  int steps = 0;
  const std::string m = generate_error(model, r, &steps);
  EXPECT_EQ(steps, 3);  // sampling was fine
  EXPECT_NE(m.find("the VAE decode gave NaN pixels"), std::string::npos) << m;
}

// A bf16/fp16 VAE decode that gives NaN/Inf is redone in fp32 on the
// pipeline's own fp32 copy of the VAE: the model it was given keeps its VAE
// and dtype. (A NaN weight stands in for the overflow, which bf16's float32
// range makes hard to provoke; the fp32 copy then fails too, as an error.)
TEST(NonFinite, VaeFallbackLeavesTheModelUnchanged) {
  SDGEN_REQUIRE_SHARED();
  LoadOptions o;
  o.model_path = test::tiny_model_dir();
  o.vae_dtype = torch::kBFloat16;
  auto model = load_model(o);
  poison(*model.vae, "decoder.conv_out.bias");
  std::map<std::string, torch::Tensor> before;  // bit patterns (NaN != NaN)
  for (const auto& p : model.vae->named_parameters())
    before[p.key()] = p.value().view(torch::kInt16).clone();
  auto r = test::golden_request("ddim");
  r.steps = 2;
  Pipeline pipeline(model);
  EXPECT_FALSE(pipeline.vae_fp32_fallback());
  testing::internal::CaptureStderr();
  EXPECT_THROW(pipeline.generate(r), Error);
  std::string log = testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("the bf16 VAE decode overflowed; decoding in fp32 from now on"),
            std::string::npos)
      << log;
  EXPECT_TRUE(pipeline.vae_fp32_fallback());
  EXPECT_EQ(model.vae_dtype, torch::kBFloat16);
  for (const auto& p : model.vae->named_parameters()) {
    ASSERT_EQ(p.value().scalar_type(), torch::kBFloat16) << p.key();
    EXPECT_TRUE(torch::equal(p.value().view(torch::kInt16), before[p.key()])) << p.key();
  }
  // Later decodes use the fp32 copy straight away: the warning comes once.
  testing::internal::CaptureStderr();
  try {
    pipeline.generate(r);
    ADD_FAILURE() << "the NaN VAE gave an image";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the VAE decode gave NaN pixels (VAE in fp32"),
              std::string::npos)
        << e.what();
  }
  log = testing::internal::GetCapturedStderr();
  EXPECT_EQ(log.find("overflowed"), std::string::npos) << log;
  // A new pipeline starts from the model's own (bf16) VAE again.
  EXPECT_FALSE(Pipeline(model).vae_fp32_fallback());
}

TEST(NonFinite, BinaryWritesNoBlackPNG) {
  SDGEN_REQUIRE_SHARED();
  // A copy of the tiny diffusers folder whose UNet has one NaN bias.
  const auto dir = test::temp_dir("nonfinite");
  const fs::path model = fs::path(dir) / "model";
  fs::copy(test::tiny_model_dir(), model, fs::copy_options::recursive);
  const fs::path unet = model / "unet" / "diffusion_pytorch_model.safetensors";
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  {
    const SafeTensorsFile file(unet.string());
    for (const auto& name : file.names()) {
      auto t = file.tensor(name).clone();
      if (name == "conv_out.bias") t.fill_(std::numeric_limits<float>::quiet_NaN());
      tensors.emplace_back(name, t);
    }
  }
  fs::remove(unet);
  write_safetensors(unet.string(), tensors);
  const std::string out = dir + "/out.png";
  std::string log;
  EXPECT_EQ(test::run(test::binary_dir() + "/sdgen --model '" + model.string() +
                          "' -p cat --steps 4 -W 64 -H 64 --seed 1 --threads 1 -q -o '" + out + "'",
                      &log),
            1)
      << log;
  EXPECT_NE(log.find("sdgen: error: generation failed: the latents became NaN at step 1/4"),
            std::string::npos)
      << log;
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace sdgen
