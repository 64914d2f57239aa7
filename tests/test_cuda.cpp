// The golden parity tests on CUDA (skipped where libtorch or the machine has
// no CUDA): fp32 within 1e-3 of the diffusers tensors, fp16/bf16 pipelines
// within a few 8-bit levels, CUDA graphs equal to eager runs, and re-capture
// when the size changes.

#include <iostream>

#include <torch/cuda.h>

#include "sdgen/device_info.h"
#include "sdgen/pipeline.h"
#include "sdgen/runtime.h"
#include "sdgen/safetensors.h"
#include "sdgen/weights.h"
#include "test_util.h"

using sdgen::test::golden;
using sdgen::test::max_abs_diff;

namespace {

#define SDGEN_REQUIRE_CUDA()                                                      \
  do {                                                                            \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device; skipping"; \
  } while (0)

sdgen::StableDiffusionModel load_cuda(torch::ScalarType dtype, bool graphs = true,
                                      int channels_last = -1) {
  sdgen::LoadOptions o;
  o.model_path = sdgen::test::tiny_model_dir();
  o.device = torch::Device(torch::kCUDA, 0);
  o.dtype = dtype;
  o.cuda_graphs = graphs;
  o.channels_last = channels_last;
  return sdgen::load_model(o);
}

struct Run {
  torch::Tensor image, image_u8;
  std::vector<torch::Tensor> steps;
};

Run run_golden(sdgen::StableDiffusionModel& model, const std::string& sampler = "ddim") {
  sdgen::Pipeline pipeline(model);
  Run run;
  auto result = pipeline.generate(sdgen::test::golden_request(sampler),
                                  [&](const sdgen::StepInfo&, const torch::Tensor& latents) {
                                    run.steps.push_back(latents.to(torch::kCPU, torch::kFloat32));
                                  });
  run.image = result.images;
  run.image_u8 = result.images_u8;
  return run;
}

}  // namespace

TEST(Cuda, ModulesMatchGoldenInFp32) {
  SDGEN_REQUIRE_SHARED();
  SDGEN_REQUIRE_CUDA();
  torch::NoGradGuard no_grad;
  auto model = load_cuda(torch::kFloat32);
  std::cout << "device: " << sdgen::device_name(model.device) << "\n";
  const auto dev = model.device;
  auto unet_out = model.unet->forward(golden("unet.in.x").to(dev), golden("unet.in.t").to(dev),
                                      golden("unet.in.ctx").to(dev));
  const double unet_err = max_abs_diff(unet_out.cpu(), golden("unet.out"));
  auto vae_out =
      model.vae->decode(golden("vae.in.z")
                            .to(dev)
                            .contiguous(model.channels_last ? torch::MemoryFormat::ChannelsLast
                                                            : torch::MemoryFormat::Contiguous));
  const double vae_err = max_abs_diff(vae_out.cpu(), golden("vae.out.image"));
  auto ids = golden("tokens.0").to(dev);
  const double text_err =
      max_abs_diff(model.text_encoder->forward(ids, 1).hidden.cpu(), golden("text.0.last"));
  std::cout << "[cuda parity] fp32 unet.out " << unet_err << ", vae.out.image " << vae_err
            << ", text.0.last " << text_err << "\n";
  EXPECT_LT(unet_err, 1e-3);
  EXPECT_LT(vae_err, 1e-3);
  EXPECT_LT(text_err, 1e-3);
}

TEST(Cuda, Fp32PipelineMatchesGoldenWithAndWithoutGraphs) {
  SDGEN_REQUIRE_SHARED();
  SDGEN_REQUIRE_CUDA();
  for (bool graphs : {true, false}) {
    auto model = load_cuda(torch::kFloat32, graphs);
    for (const std::string sampler : {"ddim", "euler_a", "dpmpp_2m"}) {
      auto run = run_golden(model, sampler);
      const auto expected = golden("pipe." + sampler + ".latents_steps");
      double worst = 0;
      for (size_t i = 0; i < run.steps.size(); ++i)
        worst = std::max(worst, max_abs_diff(run.steps[i], expected[static_cast<int64_t>(i)]));
      const double image_err = max_abs_diff(run.image, golden("pipe." + sampler + ".image"));
      const double u8 = max_abs_diff(run.image_u8, golden("pipe." + sampler + ".image_u8"));
      std::cout << "[cuda parity] fp32 " << sampler << (graphs ? " graphs" : " eager")
                << ": latents " << worst << ", image " << image_err << ", u8 " << u8 << "\n";
      EXPECT_LT(worst, 1e-3) << sampler;
      EXPECT_LT(image_err, 1e-3) << sampler;
      EXPECT_LE(u8, 1.0) << sampler;
    }
  }
}

TEST(Cuda, HalfPrecisionPipelinesWithinAFewLevels) {
  SDGEN_REQUIRE_SHARED();
  SDGEN_REQUIRE_CUDA();
  for (auto dtype : {torch::kFloat16, torch::kBFloat16}) {
    for (int channels_last : {0, 1}) {
      auto model = load_cuda(dtype, true, channels_last);
      auto run = run_golden(model);
      const double u8 = max_abs_diff(run.image_u8, golden("pipe.ddim.image_u8"));
      const double mean =
          (run.image_u8.to(torch::kFloat) - golden("pipe.ddim.image_u8").to(torch::kFloat))
              .abs()
              .mean()
              .item<double>();
      std::cout << "[cuda parity] " << (dtype == torch::kFloat16 ? "fp16" : "bf16")
                << (channels_last ? " channels_last" : "") << " ddim pipeline: u8 max diff " << u8
                << ", mean " << mean << "\n";
      // fp16 keeps ~3 decimal digits, bf16 ~2: a few levels of 255.
      EXPECT_LE(u8, dtype == torch::kFloat16 ? 4.0 : 12.0);
      EXPECT_LT(mean, 1.0);
    }
  }
}

TEST(Cuda, GraphIsRecapturedWhenTheSizeChanges) {
  SDGEN_REQUIRE_SHARED();
  SDGEN_REQUIRE_CUDA();
  auto graphs = load_cuda(torch::kFloat32, true);
  auto eager = load_cuda(torch::kFloat32, false);
  sdgen::Pipeline with_graphs(graphs), without(eager);
  for (auto [w, h, batch] : {std::tuple{64, 64, 1}, {96, 64, 2}, {64, 64, 1}}) {
    auto r = sdgen::test::golden_request("ddim");
    r.width = w;
    r.height = h;
    r.batch_size = batch;
    r.steps = 3;
    const auto a = with_graphs.generate(r).images;
    const auto b = without.generate(r).images;
    EXPECT_EQ(a.sizes(), b.sizes());
    EXPECT_LT(max_abs_diff(a, b), 1e-4) << w << "x" << h << " batch " << batch;
  }
}

// Mixed-prompt batches (Pipeline::generate_batch) on the GPU: every image
// within the fp16 tolerance above of the image its request makes alone (the
// batch's kernels may pick other algorithms than batch 1's), in fp16 with
// graphs and eagerly, for a deterministic and an ancestral sampler.
TEST(Cuda, MixedPromptBatchesMatchImagesAlone) {
  SDGEN_REQUIRE_SHARED();
  SDGEN_REQUIRE_CUDA();
  for (bool graphs : {true, false}) {
    auto model = load_cuda(torch::kFloat16, graphs);
    sdgen::Pipeline pipeline(model);
    for (auto sampler : {sdgen::Sampler::ddim, sdgen::Sampler::euler_a}) {
      std::vector<sdgen::GenerationRequest> rs(4, sdgen::test::golden_request("ddim"));
      const char* prompts[] = {"a red fox in the snow", "a (blue:1.4) cat", "",
                               "an old lighthouse at dusk"};
      for (size_t k = 0; k < rs.size(); ++k) {
        rs[k].sampler = sampler;
        rs[k].steps = 4;
        rs[k].prompt = prompts[k];
        rs[k].negative_prompt = k % 2 ? "blurry" : "";
        rs[k].seed = 10 + k;
      }
      rs[2].batch_size = 2;
      const auto batched = pipeline.generate_batch(rs);
      ASSERT_EQ(batched.size(), rs.size());
      for (size_t k = 0; k < rs.size(); ++k) {
        const auto alone = pipeline.generate(rs[k]);
        const double u8 = max_abs_diff(batched[k].images_u8, alone.images_u8);
        std::cout << "[cuda batch] fp16 " << (graphs ? "graphs " : "eager ")
                  << sdgen::to_string(sampler) << " request " << k << ": u8 max diff " << u8
                  << "\n";
        EXPECT_LE(u8, 4.0) << sdgen::to_string(sampler) << " request " << k;
      }
    }
  }
}

TEST(Cuda, LoadsThroughPinnedStagingIntoTheRequestedDtype) {
  SDGEN_REQUIRE_SHARED();
  SDGEN_REQUIRE_CUDA();
  torch::NoGradGuard no_grad;
  auto model = load_cuda(torch::kFloat16);
  sdgen::SafeTensorsFile file(sdgen::test::tiny_model_dir() +
                              "/unet/diffusion_pytorch_model.safetensors");
  for (const auto& p : model.unet->named_parameters()) {
    ASSERT_TRUE(p.value().is_cuda()) << p.key();
    ASSERT_EQ(p.value().scalar_type(), torch::kFloat16) << p.key();
    const auto expected = file.tensor(p.key()).to(torch::kFloat16);
    ASSERT_EQ(max_abs_diff(p.value().cpu().to(torch::kFloat), expected.to(torch::kFloat)), 0.0)
        << p.key();
  }
}

TEST(Cuda, Fp16VaeOverflowFallsBackToFp32) {
  SDGEN_REQUIRE_SHARED();
  SDGEN_REQUIRE_CUDA();
  auto model = load_cuda(torch::kFloat16);
  {
    // Scale the decoder's first convolution so that fp16 activations overflow
    // (|x| > 65504) while fp32 ones stay finite.
    torch::NoGradGuard no_grad;
    for (auto& p : model.vae->named_parameters())
      if (p.key() == "decoder.conv_in.weight") p.value().mul_(1e5);
  }
  sdgen::Pipeline pipeline(model);
  auto r = sdgen::test::golden_request("ddim");
  r.steps = 2;
  const auto result = pipeline.generate(r);
  EXPECT_TRUE(torch::isfinite(result.images).all().item<bool>());
  // The fallback is the pipeline's own fp32 copy: the model keeps its fp16 VAE.
  EXPECT_TRUE(pipeline.vae_fp32_fallback());
  EXPECT_EQ(model.vae_dtype, torch::kFloat16);
  for (const auto& p : model.vae->named_parameters())
    ASSERT_EQ(p.value().scalar_type(), torch::kFloat16) << p.key();
}

// SDXL on CUDA: fp32 (graphs and eager) within the golden tolerances, fp16
// and bf16 within a few levels of the fp32 golden image; an fp16 model
// decodes with an fp32 VAE (force_upcast).
TEST(Cuda, SDXLPipelines) {
  SDGEN_REQUIRE_SDXL();
  SDGEN_REQUIRE_CUDA();
  using sdgen::test::sdxl_golden;
  const auto call = sdgen::test::request_from_meta(sdxl_golden("pipe.euler.meta"), "euler");
  for (auto dtype : {torch::kFloat32, torch::kFloat16, torch::kBFloat16}) {
    for (bool graphs : {true, false}) {
      if (dtype != torch::kFloat32 && !graphs) continue;
      sdgen::LoadOptions o;
      o.model_path = sdgen::test::sdxl_model_dir();
      o.device = torch::Device(torch::kCUDA, 0);
      o.dtype = dtype;
      o.cuda_graphs = graphs;
      auto model = sdgen::load_model(o);
      if (dtype == torch::kFloat16) EXPECT_EQ(model.vae_dtype, torch::kFloat32);
      sdgen::Pipeline pipeline(model);
      std::vector<torch::Tensor> steps;
      const auto result =
          pipeline.generate(call, [&](const sdgen::StepInfo&, const torch::Tensor& l) {
            steps.push_back(l.to(torch::kCPU, torch::kFloat32));
          });
      const auto expected = sdxl_golden("pipe.euler.latents_steps");
      double worst = 0;
      for (size_t i = 0; i < steps.size(); ++i)
        worst = std::max(worst, max_abs_diff(steps[i], expected[static_cast<int64_t>(i)]));
      const auto golden_u8 = sdxl_golden("pipe.euler.image_u8");
      const double u8 = max_abs_diff(result.images_u8, golden_u8);
      const double mean = (result.images_u8.to(torch::kFloat) - golden_u8.to(torch::kFloat))
                              .abs()
                              .mean()
                              .item<double>();
      std::cout << "[cuda parity] SDXL " << sdgen::dtype_name(dtype)
                << (graphs ? " graphs" : " eager") << " euler: latents " << worst << ", u8 max "
                << u8 << ", mean " << mean << "\n";
      if (dtype == torch::kFloat32) {
        EXPECT_LT(worst, 1e-3);
        EXPECT_LE(u8, 1.0);
      } else {
        EXPECT_LE(u8, dtype == torch::kFloat16 ? 4.0 : 12.0);
        EXPECT_LT(mean, 1.0);
      }
    }
  }
}
