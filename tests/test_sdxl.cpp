// SDXL parity with diffusers (StableDiffusionXLPipeline) on the tiny SDXL of
// ../shared/models/sdxl-tiny, in both layouts: tokens, both text encoders,
// encode_prompt, add_time_ids, one UNet forward, VAE, schedules and whole
// pipelines (golden/sdxl/golden.safetensors).

#include <filesystem>
#include <fstream>
#include <memory>

#include <gtest/gtest.h>

#include "sdgen/checkpoint.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/runtime.h"
#include "sdgen/safetensors.h"
#include "sdgen/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

std::string sdxl_dir() { return test::sdxl_model_dir(); }
std::string sdxl_file() { return test::sdxl_model_file(); }
bool has_sdxl() { return test::has_sdxl(); }
torch::Tensor gold(const std::string& key) { return test::sdxl_golden(key); }

// The tiny SDXL in each layout, loaded once per process.
StableDiffusionModel& model(bool single_file) {
  static std::unique_ptr<StableDiffusionModel> folder, file;
  auto& slot = single_file ? file : folder;
  if (!slot) {
    LoadOptions o;
    o.model_path = single_file ? sdxl_file() : sdxl_dir();
    // The single file's architecture is not a standard preset: its configs
    // (and tokenizers) come from the folder, as users pass --config.
    if (single_file) o.config_dir = sdxl_dir();
    slot = std::make_unique<StableDiffusionModel>(load_model(o));
  }
  return *slot;
}

GenerationRequest golden_call(const std::string& sampler) {
  return test::request_from_meta(gold("pipe." + sampler + ".meta"), sampler);
}

class SDXLLayouts : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (!has_sdxl())
      GTEST_SKIP() << "SDXL reference data not found under " << test::shared_dir()
                   << " (models/sdxl-tiny, golden/sdxl); skipping";
  }
  StableDiffusionModel& m() { return model(GetParam()); }
  std::string layout() const { return GetParam() ? "single-file" : "diffusers"; }
};

TEST_P(SDXLLayouts, DetectedAsSDXL) {
  EXPECT_EQ(m().family, "SDXL");
  EXPECT_TRUE(m().is_sdxl());
  EXPECT_TRUE(m().force_zeros_for_empty_prompt);
  EXPECT_TRUE(m().unet->has_addition_embedding());
  EXPECT_EQ(m().vae->config().scaling_factor, 0.13025);
  EXPECT_EQ(m().scheduler_config.class_name, "EulerDiscreteScheduler");
  EXPECT_EQ(m().text_encoder_2->config().projection_dim, 32);
}

TEST_P(SDXLLayouts, TokensOfBothTokenizers) {
  const std::vector<std::string> prompts = {
      "a photograph of an astronaut riding a horse", "", "blurry, low quality",
      "A  Cat's   TOY!!  isn't   it? highly detailed, 8k, (masterpiece:1.2), [blurry]"};
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (int which : {1, 2}) {
      const Tokenizer& tok = which == 1 ? *m().tokenizer : *m().tokenizer_2;
      const auto ids = tok.encode_padded(prompts[i]);
      const auto expected = gold("tokens." + std::to_string(i) + ".te" + std::to_string(which));
      ASSERT_EQ(static_cast<int64_t>(ids.size()), expected.size(1));
      for (size_t k = 0; k < ids.size(); ++k)
        ASSERT_EQ(ids[k], expected[0][static_cast<int64_t>(k)].item<int64_t>())
            << "prompt " << i << " tokenizer " << which << " position " << k;
    }
  }
}

TEST_P(SDXLLayouts, TextEncodersMatchTransformers) {
  torch::NoGradGuard no_grad;
  double worst = 0;
  for (int i = 0; i < 5; ++i) {
    const std::string n = std::to_string(i);
    const auto ids1 = gold("tokens." + n + ".te1");
    const auto ids2 = gold("tokens." + n + ".te2");
    const auto a = m().text_encoder->forward(ids1, 2, HiddenNorm::none);
    const auto last1 = m().text_encoder->forward(ids1, 1).hidden;
    const auto b = m().text_encoder_2->forward(ids2, 2, HiddenNorm::none);
    const auto last2 = m().text_encoder_2->forward(ids2, 1).hidden;
    for (const auto& [got, key] : std::vector<std::pair<torch::Tensor, std::string>>{
             {a.hidden, "te1." + n + ".penult"},
             {last1, "te1." + n + ".last"},
             {b.hidden, "te2." + n + ".penult"},
             {last2, "te2." + n + ".last"},
             {b.text_embeds, "te2." + n + ".text_embeds"}}) {
      const double d = test::max_abs_diff(got, gold(key));
      worst = std::max(worst, d);
      EXPECT_LT(d, 1e-5) << key << " (" << layout() << ")";
    }
  }
  std::cout << "[parity] SDXL text encoders (" << layout() << "): max err " << worst << std::endl;
}

TEST_P(SDXLLayouts, EncodePromptAndTimeIds) {
  Pipeline pipeline(m());
  const auto e =
      pipeline.encode_prompt_embeddings({"a photograph of an astronaut riding a horse"}, 1);
  EXPECT_LT(test::max_abs_diff(e.context, gold("enc.prompt_embeds")), 1e-5);
  EXPECT_LT(test::max_abs_diff(e.pooled, gold("enc.pooled_prompt_embeds")), 1e-5);
  // Clip skip 1 and 2 are the same layer for SDXL (hidden_states[-2]).
  const auto e2 =
      pipeline.encode_prompt_embeddings({"a photograph of an astronaut riding a horse"}, 2);
  EXPECT_TRUE(torch::equal(e.context, e2.context));
  // The golden call has no negative prompt: zeros (force_zeros_for_empty_prompt).
  EXPECT_EQ(gold("enc.negative_prompt_embeds").abs().max().item<double>(), 0.0);

  GenerationRequest r = golden_call("euler");
  const auto [ids, negative_ids] = sdxl_add_time_ids(r);
  EXPECT_TRUE(torch::equal(ids, gold("add_time_ids")));
  EXPECT_TRUE(torch::equal(negative_ids, gold("negative_add_time_ids")));
  // WxH settings become diffusers' (height, width) tuples.
  r.size_conditioning.original_size = std::make_pair(1536, 1024);
  r.size_conditioning.crop_top_left = std::make_pair(16, 32);
  r.size_conditioning.negative_target_size = std::make_pair(512, 256);
  const auto [ids2, negative_ids2] = sdxl_add_time_ids(r);
  EXPECT_TRUE(
      torch::equal(ids2, torch::tensor({1024.f, 1536.f, 16.f, 32.f, 64.f, 64.f}).view({1, 6})));
  EXPECT_TRUE(torch::equal(negative_ids2,
                           torch::tensor({1024.f, 1536.f, 16.f, 32.f, 256.f, 512.f}).view({1, 6})));
}

TEST_P(SDXLLayouts, UNetForwardMatchesDiffusers) {
  torch::NoGradGuard no_grad;
  auto& unet = m().unet;
  const auto added =
      unet->addition_embedding(gold("unet.in.text_embeds"), gold("unet.in.time_ids"));
  const auto out = unet->forward(gold("unet.in.x"), gold("unet.in.t"), gold("unet.in.ctx"), added);
  const double d = test::max_abs_diff(out, gold("unet.out"));
  EXPECT_LT(d, 1e-4);
  // The 8x12 call: t = 1, the first row's context and pooled embedding, the
  // second row's time ids (128x96 original, crop (8, 4), 64x48 target).
  const auto added1 = unet->addition_embedding(gold("unet.in.text_embeds").narrow(0, 0, 1),
                                               gold("unet.in.time_ids").narrow(0, 1, 1));
  const auto wide = unet->forward(gold("unet.in.x_wide"), torch::tensor({1}),
                                  gold("unet.in.ctx").narrow(0, 0, 1), added1);
  const double dw = test::max_abs_diff(wide, gold("unet.out_wide"));
  EXPECT_LT(dw, 1e-4);
  std::cout << "[parity] SDXL UNet (" << layout() << "): max err " << d << ", 8x12 " << dw
            << std::endl;
  // The addition embedding is required, and refused for the wrong width.
  EXPECT_THROW(unet->forward(gold("unet.in.x"), gold("unet.in.t"), gold("unet.in.ctx")), Error);
  EXPECT_THROW(unet->addition_embedding(gold("unet.in.text_embeds"),
                                        gold("unet.in.time_ids").narrow(1, 0, 5)),
               Error);
}

TEST_P(SDXLLayouts, VaeMatchesDiffusers) {
  torch::NoGradGuard no_grad;
  const auto image = m().vae->decode(gold("vae.in.z"));
  EXPECT_LT(test::max_abs_diff(image, gold("vae.out.image")), 1e-4);
  const auto posterior = m().vae->encode(gold("vae.enc.in.image"));
  EXPECT_LT(test::max_abs_diff(posterior.mean, gold("vae.enc.mean")), 1e-4);
  EXPECT_LT(test::max_abs_diff(posterior.std, gold("vae.enc.std")), 1e-4);
}

TEST_P(SDXLLayouts, SchedulesMatchDiffusers) {
  Pipeline pipeline(m());
  for (const std::string s : {"euler", "euler_a", "dpmpp_2m", "ddim"}) {
    auto r = golden_call("euler");
    r.sampler = parse_sampler(s);
    const auto scheduler = pipeline.make_request_scheduler(r);
    const auto expected = gold("sched." + s + ".10.timesteps").to(torch::kFloat64);
    ASSERT_EQ(static_cast<int64_t>(scheduler->timesteps().size()), expected.size(0)) << s;
    for (int64_t i = 0; i < expected.size(0); ++i)
      EXPECT_NEAR(scheduler->timesteps()[static_cast<size_t>(i)], expected[i].item<double>(), 1e-6)
          << s << " timestep " << i;
    EXPECT_NEAR(scheduler->init_noise_sigma(),
                gold("sched." + s + ".10.init_noise_sigma").item<double>(), 1e-4)
        << s;
  }
}

// --timestep-spacing trailing (SDXL-Turbo / Lightning): diffusers'
// np.arange(1000, 0, -1000 / steps) - 1, without steps_offset.
TEST_P(SDXLLayouts, TrailingSpacing) {
  Pipeline pipeline(m());
  auto r = golden_call("euler");
  r.steps = 4;
  r.timestep_spacing = "trailing";
  const auto scheduler = pipeline.make_request_scheduler(r);
  EXPECT_EQ(scheduler->timesteps(), (std::vector<double>{999, 749, 499, 249}));
  r.sampler = Sampler::euler_a;
  r.steps = 1;
  EXPECT_EQ(pipeline.make_request_scheduler(r)->timesteps(), (std::vector<double>{999}));
}

// The whole pipeline: every step's latents and the image, within 1 level.
void check_pipeline(StableDiffusionModel& model, const std::string& key, GenerationRequest r,
                    const std::string& layout) {
  Pipeline pipeline(model);
  const auto expected_steps = gold(key + ".latents_steps");
  std::vector<torch::Tensor> steps;
  const auto result = pipeline.generate(r, [&](const StepInfo&, const torch::Tensor& l) {
    steps.push_back(l.to(torch::kCPU, torch::kFloat32).clone());
  });
  ASSERT_EQ(static_cast<int64_t>(steps.size()), expected_steps.size(0)) << key;
  double worst = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto expected = expected_steps[static_cast<int64_t>(i)];
    const double d = test::max_abs_diff(steps[i], expected);
    worst = std::max(worst, d);
    const double scale = std::max(1.0, expected.abs().max().item<double>());
    EXPECT_LT(d, 1e-4 * scale) << key << " step " << i << " (" << layout << ")";
  }
  const double image_err = test::max_abs_diff(result.images, gold(key + ".image"));
  const double u8_err = test::max_abs_diff(result.images_u8, gold(key + ".image_u8"));
  std::cout << "[parity] SDXL " << key << " (" << layout << "): latents max err " << worst
            << ", image max err " << image_err << ", u8 max diff " << u8_err << std::endl;
  EXPECT_LT(image_err, 1e-4) << key << " (" << layout << ")";
  EXPECT_LE(u8_err, 1.0) << key << " (" << layout << ")";
}

TEST_P(SDXLLayouts, PipelinesMatchDiffusers) {
  for (const std::string s : {"euler", "euler_a", "dpmpp_2m", "ddim"})
    check_pipeline(m(), "pipe." + s, golden_call(s), layout());
}

TEST_P(SDXLLayouts, NegativePromptMatchesDiffusers) {
  auto r = golden_call("euler");
  r.negative_prompt = "blurry, low quality";
  check_pipeline(m(), "pipe_neg.euler", r, layout());
}

// A1111's syntax on both encoders: chunks of 75 tokens side by side on the
// sequence axis, emphasis per encoder, the pooled output of the first chunk.
TEST_P(SDXLLayouts, LongPromptsAndEmphasis) {
  Pipeline pipeline(m());
  std::string long_prompt;
  for (int i = 0; i < 30; ++i) long_prompt += "a red fox and a blue bird, ";
  const auto e = pipeline.encode_prompt_embeddings({long_prompt}, 1);
  const int64_t chunks = pipeline.prompt_chunk_count(long_prompt);
  ASSERT_GT(chunks, 2);
  EXPECT_EQ(e.context.sizes().vec(), (std::vector<int64_t>{1, chunks * 77, 96}));
  EXPECT_EQ(e.pooled.sizes().vec(), (std::vector<int64_t>{1, 32}));
  const auto plain = pipeline.encode_prompt_embeddings({"a fox in the snow"}, 1);
  const auto weighted = pipeline.encode_prompt_embeddings({"a (fox:1.5) in the snow"}, 1);
  EXPECT_FALSE(torch::allclose(plain.context, weighted.context));
  // Emphasis scales the hidden states, not the pooled embedding (A1111).
  EXPECT_TRUE(torch::allclose(plain.pooled, weighted.pooled));
  auto r = golden_call("euler");
  r.steps = 2;
  r.prompt = long_prompt;
  r.negative_prompt = "blurry";
  EXPECT_TRUE(torch::isfinite(pipeline.generate(r).images).all().item<bool>());
}

INSTANTIATE_TEST_SUITE_P(Both, SDXLLayouts, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("SingleFile") : std::string("Diffusers");
                         });

// The CPU's other dtypes and layouts: within a few levels of the fp32 golden
// image (looser where libtorch emulates bf16, as test_pipeline measures).
TEST(SDXL, CpuDtypesAndLayoutsStayWithinAFewLevels) {
  SDGEN_REQUIRE_SDXL();
  for (const auto& [dtype, channels_last] :
       {std::pair{torch::kFloat32, 1}, std::pair{torch::kBFloat16, 0},
        std::pair{torch::kBFloat16, 1}}) {
    LoadOptions o;
    o.model_path = sdxl_dir();
    o.dtype = dtype;
    o.channels_last = channels_last;
    auto model = load_model(o);
    Pipeline pipeline(model);
    const auto result = pipeline.generate(golden_call("euler"));
    const auto diff =
        (result.images_u8.to(torch::kFloat) - gold("pipe.euler.image_u8").to(torch::kFloat)).abs();
    const bool fp32 = dtype == torch::kFloat32;
    std::cout << "[parity] SDXL cpu " << (fp32 ? "fp32" : "bf16")
              << (channels_last ? " channels_last" : "") << " euler: u8 max diff "
              << diff.max().item<double>() << ", mean " << diff.mean().item<double>() << "\n";
    const bool emulated = !fp32 && !cpu_has_native_bf16();
    EXPECT_LE(diff.max().item<double>(), fp32 ? 1.0 : emulated ? 32.0 : 8.0);
    EXPECT_LT(diff.mean().item<double>(), fp32 ? 0.5 : emulated ? 5.0 : 2.0);
  }
}

TEST(SDXL, SizeConditioningRefusedForSD1) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  auto r = test::golden_request("ddim");
  r.size_conditioning.original_size = std::make_pair(1024, 1024);
  try {
    pipeline.validate(r);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--original-size applies to SDXL models only"),
              std::string::npos)
        << e.what();
  }
}

TEST(SDXL, SingleFileDetection) {
  SDGEN_REQUIRE_SDXL();
  SafeTensorsFile f(sdxl_file());
  const TensorMap all = tensors_with_prefix(f, "");
  EXPECT_EQ(detect_family(all), ModelFamily::SDXL);
  // The addition embedding's widths come from label_emb and the projection.
  const auto unet = infer_unet_config(all, ModelFamily::SDXL);
  EXPECT_EQ(unet.addition_embed_type, "text_time");
  EXPECT_EQ(unet.projection_class_embeddings_input_dim, 80);
  EXPECT_EQ(unet.addition_time_embed_dim, 8);
  EXPECT_EQ(unet.transformer_layers_per_block, (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(unet.down_block_types[0], "DownBlock2D");
  EXPECT_EQ(unet.cross_attention_dim, 96);
  const auto clip2 = infer_clip2_config(all);
  EXPECT_TRUE(clip2.with_projection);
  EXPECT_EQ(clip2.projection_dim, 32);
  EXPECT_EQ(clip2.num_hidden_layers, 4);
  EXPECT_EQ(infer_vae_config(all, ModelFamily::SDXL).scaling_factor, 0.13025);

  auto expect_refused = [](const TensorMap& m, const std::string& words) {
    try {
      detect_family(m);
      ADD_FAILURE() << "expected an error with: " << words;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  // A refiner: one OpenCLIP encoder as embedders.0.
  TensorMap refiner;
  for (const auto& [k, t] : all) {
    if (k.rfind("conditioner.embedders.0.", 0) == 0) continue;
    std::string key = k;
    if (key.rfind("conditioner.embedders.1.", 0) == 0)
      key = "conditioner.embedders.0." + key.substr(24);
    refiner.emplace(key, t);
  }
  expect_refused(refiner, "SDXL refiner");
  // One text encoder missing.
  TensorMap no_g;
  for (const auto& [k, t] : all)
    if (k.rfind("conditioner.embedders.1.", 0) != 0) no_g.emplace(k, t);
  expect_refused(no_g, "without its second text encoder");
  // A LoRA given as a model.
  TensorMap lora;
  lora.emplace("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
               torch::zeros({4, 64}));
  expect_refused(lora, "looks like a LoRA");
}

}  // namespace
}  // namespace sdgen

namespace sdgen {
namespace {

std::string sdgen_bin() { return test::binary_dir() + "/sdgen"; }

// `sdgen` with no sampler or guidance flags runs diffusers' default SDXL call
// (the model's Euler scheduler, guidance 5.0): the golden image, within 1 level.
TEST(SDXLCli, DefaultsAreDiffusersDefaults) {
  SDGEN_REQUIRE_SDXL();
  const std::string dir = test::temp_dir("sdxl-cli");
  for (const bool single_file : {false, true}) {
    const std::string out = dir + (single_file ? "/file.png" : "/folder.png");
    const std::string model = single_file ? "'" + sdxl_file() + "' --config '" + sdxl_dir() + "'"
                                          : "'" + sdxl_dir() + "'";
    std::string log;
    ASSERT_EQ(test::run(sdgen_bin() + " -m " + model +
                            " -p 'a photograph of an astronaut riding a horse' --steps 10 -s 42 "
                            "-W 64 -H 64 -q -o '" +
                            out + "'",
                        &log),
              0)
        << log;
    const auto image = read_png(out).pixels;
    const double d = test::max_abs_diff(image.unsqueeze(0), gold("pipe.euler.image_u8"));
    EXPECT_LE(d, 1.0) << out;
    std::string params;
    ASSERT_EQ(test::run(sdgen_bin() + " --show-params '" + out + "'", &params), 0);
    EXPECT_NE(params.find("Sampler: Euler, CFG scale: 5,"), std::string::npos) << params;
  }
}

// The size/crop settings: written to the PNG, read back by --from-png (same
// bytes), taken from prompt-file lines, and refused for an SD1 model.
TEST(SDXLCli, SizeConditioningSettings) {
  SDGEN_REQUIRE_SDXL();
  const std::string dir = test::temp_dir("sdxl-cond");
  const std::string base = sdgen_bin() + " -m '" + sdxl_dir() + "' --steps 3 -s 7 -q ";
  std::string log;
  ASSERT_EQ(test::run(base +
                          "-p fox --original-size 128x96 --crop-top-left 8,4 "
                          "--negative-target-size 32x32 -o '" +
                          dir + "/a.png'",
                      &log),
            0)
      << log;
  ASSERT_EQ(test::run(base + "-p fox -o '" + dir + "/plain.png'", &log), 0) << log;
  std::string params;
  ASSERT_EQ(test::run(sdgen_bin() + " --show-params '" + dir + "/a.png'", &params), 0);
  for (const char* field :
       {"Original size: 128x96", "Crop top-left: \"8,4\"", "Negative target size: 32x32"})
    EXPECT_NE(params.find(field), std::string::npos) << params;
  EXPECT_EQ(params.find("Target size:"), std::string::npos) << params;  // unset: not written
  ASSERT_EQ(test::run(sdgen_bin() + " -m '" + sdxl_dir() + "' -q --from-png '" + dir +
                          "/a.png' -o '" + dir + "/b.png'",
                      &log),
            0)
      << log;
  const auto a = read_png(dir + "/a.png").pixels, b = read_png(dir + "/b.png").pixels;
  EXPECT_TRUE(torch::equal(a, b)) << "--from-png did not reproduce the image";
  EXPECT_FALSE(torch::equal(a, read_png(dir + "/plain.png").pixels))
      << "the size conditioning changed nothing";
  // A prompt-file line with the same keys makes the same image.
  {
    std::ofstream f(dir + "/p.jsonl");
    f << R"({"prompt": "fox", "original_size": "128x96", "crop_top_left": "8,4", )"
      << R"("negative_target_size": "32x32", "output": ")" << dir << R"(/c.png"})"
      << "\n";
  }
  ASSERT_EQ(test::run(base + "--prompt-file '" + dir + "/p.jsonl'", &log), 0) << log;
  EXPECT_TRUE(torch::equal(a, read_png(dir + "/c.png").pixels));
  // Bad values name the flag; an SD1 model refuses the settings.
  EXPECT_EQ(test::run(base + "-p fox --original-size 1024 -o '" + dir + "/x.png'", &log), 2);
  EXPECT_NE(log.find("--original-size"), std::string::npos) << log;
  if (test::has_shared()) {
    EXPECT_NE(test::run(sdgen_bin() + " -m '" + test::tiny_model_dir() +
                            "' -q -p fox --steps 2 --target-size 64x64 -o '" + dir + "/y.png'",
                        &log),
              0);
    EXPECT_NE(log.find("--target-size applies to SDXL models only"), std::string::npos) << log;
    EXPECT_FALSE(fs::exists(dir + "/y.png"));
  }
}

// img2img, batches, tiling and a made-up tiny SDXL (sdgen-mkmodel tiny-sdxl).
TEST(SDXLCli, Img2ImgBatchTilingAndMkmodel) {
  SDGEN_REQUIRE_SDXL();
  const std::string dir = test::temp_dir("sdxl-misc");
  const std::string base = sdgen_bin() + " -m '" + sdxl_dir() + "' --steps 4 -s 3 -q ";
  std::string log;
  ASSERT_EQ(test::run(base + "-p fox -b 2 -W 64 -H 96 -o '" + dir + "/batch.png'", &log), 0) << log;
  EXPECT_TRUE(fs::exists(dir + "/batch-0.png") && fs::exists(dir + "/batch-1.png")) << log;
  EXPECT_EQ(read_png(dir + "/batch-0.png").pixels.size(0), 96);
  ASSERT_EQ(test::run(base + "-p fox -i '" + dir + "/batch-0.png' --strength 0.5 -o '" + dir +
                          "/i2i.png'",
                      &log),
            0)
      << log;
  ASSERT_EQ(test::run(base + "-p fox --vae-tiling -o '" + dir + "/tiled.png'", &log), 0) << log;
  const std::string made = dir + "/made";
  ASSERT_EQ(test::run(test::binary_dir() + "/sdgen-mkmodel tiny-sdxl -o '" + made + "'", &log), 0)
      << log;
  ASSERT_EQ(test::run(sdgen_bin() + " -m '" + made + "' --info", &log), 0) << log;
  EXPECT_NE(log.find("family:      SDXL"), std::string::npos) << log;
  ASSERT_EQ(test::run(sdgen_bin() + " -m '" + made + "' -q -p 'a (cat:1.2)' --steps 2 -o '" + dir +
                          "/made.png'",
                      &log),
            0)
      << log;
}

}  // namespace
}  // namespace sdgen
