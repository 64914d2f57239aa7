// Mixed-prompt batching (Pipeline::generate_batch) on the tiny model: every
// image of a batch is, bit for bit on the CPU in fp32, the image its request
// makes alone, whatever its prompt, negative prompt, weights, clip skip,
// seed, batch size or init image; and which requests may share a batch.

#include <string>
#include <vector>

#include "sdgen/error.h"
#include "sdgen/pipeline.h"
#include "sdgen/runtime.h"
#include "test_util.h"

namespace sdgen {
namespace {

// 40 words: two 75-token chunks with the tiny model's CLIP tokenizer.
std::string long_prompt(const std::string& word) {
  std::string text;
  for (int i = 0; i < 40; ++i) text += word + " house, ";
  return text;
}

GenerationRequest base_request(Sampler sampler) {
  GenerationRequest r;
  r.width = 64;
  r.height = 64;
  r.steps = 3;
  r.cfg_scale = 7.5;
  r.sampler = sampler;
  return r;
}

// Mixed requests that may share a batch: different prompts (with weights),
// negative prompts, seeds, clip skip and batch sizes.
std::vector<GenerationRequest> mixed_requests(Sampler sampler) {
  std::vector<GenerationRequest> rs(4, base_request(sampler));
  rs[0].prompt = "a red fox in the snow";
  rs[0].seed = 1;
  rs[1].prompt = "a (blue:1.4) cat, [sleeping]";
  rs[1].negative_prompt = "blurry, low quality";
  rs[1].seed = 22;
  rs[2].prompt = "";
  rs[2].seed = 333;
  rs[2].batch_size = 2;
  rs[3].prompt = "an old lighthouse at dusk, (oil painting:0.8)";
  rs[3].negative_prompt = "text";
  rs[3].seed = 1;  // the same seed as request 0: its own generator
  rs[3].clip_skip = 2;
  return rs;
}

// generate_batch(rs) against generate() of each request, bit for bit.
void expect_batch_equals_alone(Pipeline& pipeline, const std::vector<GenerationRequest>& rs,
                               const std::string& what) {
  for (size_t k = 1; k < rs.size(); ++k)
    ASSERT_EQ(pipeline.batch_mismatch(rs[0], rs[k]), "") << what << " request " << k;
  int steps_seen = 0;
  const auto batched = pipeline.generate_batch(
      rs, [&](const StepInfo& info, const torch::Tensor&) { EXPECT_EQ(info.index, steps_seen++); });
  EXPECT_GT(steps_seen, 0);
  ASSERT_EQ(batched.size(), rs.size());
  for (size_t k = 0; k < rs.size(); ++k) {
    const auto alone = pipeline.generate(rs[k]);
    ASSERT_EQ(batched[k].images.sizes(), alone.images.sizes()) << what << " request " << k;
    EXPECT_TRUE(torch::equal(batched[k].latents, alone.latents))
        << what << " request " << k << ": latents differ by "
        << test::max_abs_diff(batched[k].latents, alone.latents);
    EXPECT_TRUE(torch::equal(batched[k].images, alone.images))
        << what << " request " << k << ": images differ by "
        << test::max_abs_diff(batched[k].images, alone.images);
    EXPECT_TRUE(torch::equal(batched[k].images_u8, alone.images_u8)) << what << " request " << k;
    EXPECT_EQ(pipeline.batch_embeddings_used().at(k), pipeline.embeddings_used());
  }
}

TEST(Batch, MixedPromptsEqualAloneForEverySamplerKind) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  // Deterministic (DDIM), noise-adding (DDPM, Euler a, LCM, DDIM eta),
  // multistep state (DPM++ 2M) and second order (Heun).
  for (Sampler s : {Sampler::ddim, Sampler::ddpm, Sampler::euler_a, Sampler::lcm, Sampler::dpmpp_2m,
                    Sampler::heun}) {
    auto rs = mixed_requests(s);
    if (s == Sampler::lcm)
      for (auto& r : rs) r.cfg_scale = 1.0;  // LCM runs unguided
    expect_batch_equals_alone(pipeline, rs, to_string(s));
  }
  auto rs = mixed_requests(Sampler::ddim);
  for (auto& r : rs) r.eta = 0.6;
  expect_batch_equals_alone(pipeline, rs, "ddim eta 0.6");
}

// The one-call layout CUDA uses (rows [uncond of each request, cond of each
// request], each request's noise and guidance on its own rows), run on the
// CPU: within float rounding of alone (a row out of place would be far off).
TEST(Batch, OneCallBatchesStayWithinRoundingOfAlone) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  pipeline.set_exact_cpu_batches(false);
  for (Sampler s : {Sampler::ddim, Sampler::euler_a}) {
    const auto rs = mixed_requests(s);
    const auto batched = pipeline.generate_batch(rs);
    ASSERT_EQ(batched.size(), rs.size());
    for (size_t k = 0; k < rs.size(); ++k) {
      const auto alone = pipeline.generate(rs[k]);
      ASSERT_EQ(batched[k].images.sizes(), alone.images.sizes());
      const double latents = test::max_abs_diff(batched[k].latents, alone.latents);
      const double u8 = test::max_abs_diff(batched[k].images_u8, alone.images_u8);
      std::cout << "[batch] one call, " << to_string(s) << " request " << k << ": latents "
                << latents << ", u8 " << u8 << std::endl;
      EXPECT_LT(latents, 1e-3) << to_string(s) << " request " << k;
      EXPECT_LE(u8, 1.0) << to_string(s) << " request " << k;
    }
  }
  auto rs = mixed_requests(Sampler::euler);
  for (auto& r : rs) r.guidance_rescale = 0.7;
  const auto batched = pipeline.generate_batch(rs);
  for (size_t k = 0; k < rs.size(); ++k)
    EXPECT_LT(test::max_abs_diff(batched[k].latents, pipeline.generate(rs[k]).latents), 1e-3)
        << "guidance rescale, request " << k;
}

TEST(Batch, GuidanceRescaleAndSchedulesPerImage) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  auto rs = mixed_requests(Sampler::euler);
  for (auto& r : rs) {
    r.guidance_rescale = 0.7;
    r.schedule = SigmaSchedule::karras;
  }
  expect_batch_equals_alone(pipeline, rs, "euler karras rescale 0.7");
}

TEST(Batch, LongPromptsOfEqualChunkCounts) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  std::vector<GenerationRequest> rs(3, base_request(Sampler::euler_a));
  rs[0].prompt = long_prompt("red");  // 2 chunks, short negative padded to 2
  rs[0].seed = 5;
  rs[1].prompt = "a short prompt";
  rs[1].negative_prompt = long_prompt("(ugly:1.2)");  // 2 chunks from the negative
  rs[1].seed = 6;
  rs[2].prompt = long_prompt("green") + " BREAK a river";
  rs[2].seed = 7;
  ASSERT_EQ(pipeline.prompt_chunk_count(rs[0].prompt), 2);
  // Three chunks (BREAK starts one) against two: these cannot share a batch.
  ASSERT_EQ(pipeline.prompt_chunk_count(rs[2].prompt), 3);
  EXPECT_NE(pipeline.batch_mismatch(rs[0], rs[2]), "");
  EXPECT_THROW(pipeline.generate_batch(rs), Error);
  rs.pop_back();
  expect_batch_equals_alone(pipeline, rs, "two-chunk prompts");
}

TEST(Batch, Img2ImgWithDifferentInitImages) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  torch::manual_seed(3);
  std::vector<GenerationRequest> rs(2, base_request(Sampler::dpmpp_2m));
  for (size_t k = 0; k < rs.size(); ++k) {
    rs[k].prompt = k ? "a castle" : "a forest";
    rs[k].seed = 40 + k;
    rs[k].steps = 4;
    rs[k].strength = 0.6;
    rs[k].init_image = torch::randint(0, 256, {64 + 16 * static_cast<int64_t>(k), 64, 3},
                                      torch::TensorOptions().dtype(torch::kUInt8));
  }
  expect_batch_equals_alone(pipeline, rs, "img2img");
}

TEST(Batch, WhatCannotShareABatch) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  const auto a = base_request(Sampler::ddim);
  auto differ = [&](auto change) {
    GenerationRequest b = a;
    change(b);
    return pipeline.batch_mismatch(a, b);
  };
  EXPECT_EQ(differ([](GenerationRequest& b) { b.prompt = "another prompt"; }), "");
  EXPECT_EQ(differ([](GenerationRequest& b) { b.seed = 9; }), "");
  EXPECT_EQ(differ([](GenerationRequest& b) { b.batch_size = 3; }), "");
  EXPECT_EQ(differ([](GenerationRequest& b) { b.clip_skip = 2; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.width = 128; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.steps = 4; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.sampler = Sampler::euler; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.schedule = SigmaSchedule::karras; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.timestep_spacing = "trailing"; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.eta = 0.5; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.cfg_scale = 5; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.guidance_rescale = 0.5; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.vae_tiling = true; }), "");
  EXPECT_NE(differ([](GenerationRequest& b) {
              b.init_image = torch::zeros({64, 64, 3}, torch::kUInt8);
            }),
            "");
  EXPECT_NE(differ([](GenerationRequest& b) {
              b.init_image = torch::zeros({64, 64, 3}, torch::kUInt8);
              b.mask = torch::full({64, 64}, 255, torch::kUInt8);
            }),
            "");
  EXPECT_NE(differ([](GenerationRequest& b) { b.prompt = long_prompt("x"); }), "");
  // Img2img of different strengths.
  GenerationRequest i1 = a, i2 = a;
  i1.init_image = i2.init_image = torch::zeros({64, 64, 3}, torch::kUInt8);
  i2.strength = 0.5;
  EXPECT_EQ(pipeline.batch_mismatch(i1, i1), "");
  EXPECT_NE(pipeline.batch_mismatch(i1, i2), "");
  // A batch of one is generate() itself.
  const auto one = pipeline.generate_batch({a});
  ASSERT_EQ(one.size(), 1u);
  EXPECT_TRUE(torch::equal(one[0].images_u8, pipeline.generate(a).images_u8));
  EXPECT_TRUE(pipeline.generate_batch({}).empty());
}

}  // namespace
}  // namespace sdgen
