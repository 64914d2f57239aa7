// Inpainting against diffusers' StableDiffusionInpaintPipeline
// (../shared/golden/sd1-extras: inpaint9.* with the 9-channel
// sd1-inpaint-tiny in both layouts, inpaint4.* with sd1-tiny's 4-channel
// UNet), the mask helpers, paste-back, and the binary (metadata, prompt
// files, bad input).

#include <filesystem>
#include <fstream>
#include <memory>

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/inpaint.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/safetensors.h"
#include "sdgen/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

std::string extras_dir() { return test::shared_dir() + "/golden/sd1-extras"; }
std::string inpaint_file() { return test::shared_dir() + "/models/sd1-inpaint-tiny.safetensors"; }
std::string inpaint_configs() { return test::shared_dir() + "/models/sd1-inpaint-tiny"; }

bool has_inpaint_data() {
  return fs::exists(extras_dir() + "/golden.safetensors") && fs::exists(inpaint_file()) &&
         fs::exists(inpaint_configs() + "/unet/config.json");
}

#define SDGEN_REQUIRE_INPAINT()                                                         \
  do {                                                                                  \
    SDGEN_REQUIRE_SHARED();                                                             \
    if (!has_inpaint_data())                                                            \
      GTEST_SKIP() << "golden/sd1-extras or models/sd1-inpaint-tiny missing; skipping"; \
  } while (0)

torch::Tensor extra(const std::string& key) {
  static std::unique_ptr<SafeTensorsFile> f;
  if (!f) f = std::make_unique<SafeTensorsFile>(extras_dir() + "/golden.safetensors");
  return f->tensor(key).clone();
}

// golden.json "inpaint": "a red fox in the snow", negative "blurry, low
// quality", seed 5, DDIM, 64x64, 10 steps, guidance 7.5.
GenerationRequest golden_call(double strength) {
  GenerationRequest r;
  r.prompt = "a red fox in the snow";
  r.negative_prompt = "blurry, low quality";
  r.seed = 5;
  r.sampler = Sampler::ddim;
  r.width = r.height = 64;
  r.steps = 10;
  r.cfg_scale = 7.5;
  r.strength = strength;
  r.init_image = extra("inpaint.init_u8");
  r.mask = extra("inpaint.mask_u8");
  return r;
}

StableDiffusionModel& inpaint_model_single() {
  static std::unique_ptr<StableDiffusionModel> model;
  if (!model) {
    LoadOptions o;
    o.model_path = inpaint_file();
    o.config_dir = inpaint_configs();
    model = std::make_unique<StableDiffusionModel>(load_model(o));
  }
  return *model;
}

// A diffusers folder made from the single file: the configs, tokenizer and
// scheduler of models/sd1-inpaint-tiny/, sd1-tiny's text encoder and VAE
// weights (the same ones), the 9-channel UNet written under diffusers' names.
std::string assemble_diffusers_folder() {
  static std::string dir;
  if (!dir.empty()) return dir;
  dir = test::temp_dir("inpaint-folder");
  fs::copy(inpaint_configs(), dir,
           fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  for (const char* part :
       {"text_encoder/model.safetensors", "vae/diffusion_pytorch_model.safetensors"})
    fs::copy_file(test::tiny_model_dir() + "/" + part, dir + "/" + part,
                  fs::copy_options::overwrite_existing);
  write_safetensors(dir + "/unet/diffusion_pytorch_model.safetensors",
                    named_tensors(*inpaint_model_single().unet, "", torch::kFloat32));
  return dir;
}

double u8_diff(const GenerationResult& result, const std::string& key) {
  return test::max_abs_diff(result.images_u8, extra(key));
}

TEST(InpaintMask, GrayBinarizeBlurAndPaste) {
  // PIL's convert("L"): (19595 R + 38470 G + 7471 B + 0x8000) >> 16.
  auto rgb = torch::tensor({255, 0, 0, 0, 255, 0, 0, 0, 255, 128, 128, 128, 127, 128, 129, 1, 2, 3},
                           torch::kUInt8)
                 .view({1, 6, 3});
  const auto gray = mask_to_gray(rgb)[0];
  const std::vector<int> expected{76, 150, 29, 128, 128, 2};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(gray[i].item<int>(), expected[static_cast<size_t>(i)]) << i;
  // RGBA ignores alpha; gray + alpha keeps the gray.
  auto rgba = torch::cat({rgb, torch::zeros({1, 6, 1}, torch::kUInt8)}, 2);
  EXPECT_TRUE(torch::equal(mask_to_gray(rgba), mask_to_gray(rgb)));
  auto la = torch::stack({gray, torch::zeros_like(gray)}, 1).unsqueeze(0);
  EXPECT_TRUE(torch::equal(mask_to_gray(la)[0], gray));

  // >= 128 repaints (0.5 after / 255), below keeps.
  auto m = binarize_mask(torch::tensor({127, 128, 0, 255}, torch::kUInt8).view({2, 2}), 2, 2);
  EXPECT_TRUE(torch::equal(m.view({4}), torch::tensor({0.f, 1.f, 0.f, 1.f})));

  // Blur: A1111's kernel (sigma 4: 21 taps), symmetric, mass kept, borders
  // reflected; 0 leaves the mask as it is.
  auto square = torch::zeros({60, 60});
  square.slice(0, 15, 45).slice(1, 15, 45).fill_(1);
  EXPECT_TRUE(torch::equal(blur_mask(square, 0), square));
  const auto b = blur_mask(square, 4);
  EXPECT_NEAR(b.sum().item<double>(), square.sum().item<double>(), 1e-2);
  EXPECT_TRUE(torch::allclose(b, b.flip({0}), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(b, b.t(), 1e-6, 1e-6));
  EXPECT_GT(b[14][30].item<float>(), 0.2f);  // outside, next to the edge: partly repainted
  EXPECT_LT(b[15][30].item<float>(), 0.8f);  // inside, next to the edge: partly kept
  EXPECT_NEAR(b[30][30].item<float>(), 1.0f, 2e-3);
  EXPECT_EQ(b[4][30].item<float>(), 0.0f);              // more than 10 pixels away: untouched
  const auto full = blur_mask(torch::ones({3, 5}), 4);  // kernel wider than the image
  EXPECT_TRUE(torch::allclose(full, torch::ones({3, 5}), 1e-5, 1e-5));

  // Paste-back: the original's exact bytes where the mask is 0.
  auto images = torch::rand({2, 60, 60, 3});
  auto original = torch::randint(0, 256, {60, 60, 3}, torch::kUInt8);
  const auto pasted = paste_back(images, original, b);
  const auto u8 = (pasted * 255).round().to(torch::kUInt8);
  for (int64_t k = 0; k < 2; ++k) {
    EXPECT_TRUE(torch::equal(u8[k].slice(0, 0, 4), original.slice(0, 0, 4)));
    EXPECT_TRUE(torch::allclose(pasted[k][30][30], images[k][30][30], 2e-3, 2e-3));
  }
}

// 9-channel UNet, single file and diffusers folder, strength 1 and 0.75.
TEST(InpaintGolden, NineChannelBothLayouts) {
  SDGEN_REQUIRE_INPAINT();
  LoadOptions folder;
  folder.model_path = assemble_diffusers_folder();
  auto from_folder = load_model(folder);
  for (auto* model : {&inpaint_model_single(), &from_folder}) {
    ASSERT_EQ(model->unet->config().in_channels, 9);
    Pipeline pipeline(*model);
    std::vector<torch::Tensor> steps;
    auto result = pipeline.generate(golden_call(1.0), [&](const StepInfo&, const torch::Tensor& l) {
      steps.push_back(l.clone());
    });
    const double latents_err =
        test::max_abs_diff(torch::stack(steps), extra("inpaint9.ddim.latents_steps"));
    const double image_err = test::max_abs_diff(result.images, extra("inpaint9.ddim.image"));
    const double u8 = u8_diff(result, "inpaint9.ddim.image_u8");
    std::cout << "[parity] inpaint9 ddim (" << model->layout << "): latents max err " << latents_err
              << ", image " << image_err << ", u8 " << u8 << "\n";
    EXPECT_LT(latents_err, 1e-4);
    EXPECT_LE(u8, 1.0);

    auto partial = pipeline.generate(golden_call(0.75));
    EXPECT_EQ(partial.timings.steps, 7);  // int(10 * 0.75)
    const double u8_075 = u8_diff(partial, "inpaint9_s075.ddim.image_u8");
    std::cout << "[parity] inpaint9 ddim strength 0.75 (" << model->layout << "): u8 " << u8_075
              << "\n";
    EXPECT_LE(u8_075, 1.0);
  }
}

// 4-channel UNet: the kept part re-noised from the image after every step.
TEST(InpaintGolden, PlainUNetBlends) {
  SDGEN_REQUIRE_INPAINT();
  Pipeline pipeline(test::tiny_model());
  for (const auto& [strength, key] :
       {std::pair<double, std::string>{1.0, "inpaint4"}, {0.75, "inpaint4_s075"}}) {
    const auto result = pipeline.generate(golden_call(strength));
    const double u8 = u8_diff(result, key + ".ddim.image_u8");
    std::cout << "[parity] " << key << " ddim: image max err "
              << test::max_abs_diff(result.images, extra(key + ".ddim.image")) << ", u8 " << u8
              << "\n";
    EXPECT_LE(u8, 1.0);
  }
}

// A mask of another size is resized as the image is; gray, RGB and RGBA
// masks of the same picture give the same image; a 9-channel model without
// a mask repaints everything (an all-white mask); batches keep image 0.
TEST(Inpaint, MaskSizesFormatsBatchesAndNoMask) {
  SDGEN_REQUIRE_INPAINT();
  Pipeline pipeline(inpaint_model_single());
  auto call = golden_call(1.0);
  call.steps = 4;
  const auto base = pipeline.generate(call).images_u8;

  auto big = call;  // 2x larger, every pixel doubled
  big.mask = call.mask.repeat_interleave(2, 0).repeat_interleave(2, 1).contiguous();
  EXPECT_TRUE(torch::equal(pipeline.generate(big).images_u8, base));

  auto rgba = call;
  const auto rgb = call.mask.unsqueeze(2).repeat({1, 1, 3});
  rgba.mask = mask_to_gray(torch::cat({rgb, torch::full({64, 64, 1}, 7, torch::kUInt8)}, 2));
  EXPECT_TRUE(torch::equal(pipeline.generate(rgba).images_u8, base));

  auto white = call;
  white.mask = torch::full({64, 64}, 255, torch::kUInt8);
  auto txt2img = call;
  txt2img.init_image = torch::Tensor();
  txt2img.mask = torch::Tensor();
  EXPECT_TRUE(
      torch::equal(pipeline.generate(txt2img).images_u8, pipeline.generate(white).images_u8));

  auto batch = call;
  batch.batch_size = 2;
  const auto two = pipeline.generate(batch).images_u8;
  EXPECT_EQ(two.size(0), 2);
  EXPECT_FALSE(torch::equal(two[0], two[1]));

  // Other samplers run (ancestral ones draw after the masked image's sample).
  for (const auto sampler : {Sampler::euler_a, Sampler::dpmpp_2m, Sampler::heun}) {
    auto other = call;
    other.sampler = sampler;
    EXPECT_EQ(pipeline.generate(other).images_u8.sizes(), base.sizes());
  }
}

TEST(Inpaint, PasteBack) {
  SDGEN_REQUIRE_INPAINT();
  Pipeline pipeline(test::tiny_model());
  auto call = golden_call(1.0);
  call.steps = 3;
  const auto plain = pipeline.generate(call).images_u8[0];
  call.paste_back = true;
  call.mask_blur = 0;
  const auto sharp = pipeline.generate(call).images_u8[0];
  const auto keep = (call.mask < 128).unsqueeze(2).expand({64, 64, 3});
  EXPECT_TRUE(torch::equal(sharp.masked_select(keep), call.init_image.masked_select(keep)));
  EXPECT_TRUE(torch::equal(sharp.masked_select(~keep), plain.masked_select(~keep)));
  EXPECT_FALSE(torch::equal(plain.masked_select(keep), call.init_image.masked_select(keep)));

  call.mask_blur = 4;  // feathered: mixed next to the edge, exact far from it
  const auto soft = pipeline.generate(call).images_u8[0].to(torch::kInt);
  const auto init = call.init_image.to(torch::kInt);
  EXPECT_TRUE(torch::equal(soft.slice(0, 0, 4), init.slice(0, 0, 4)));  // rows 0-3: 12+ px away
  EXPECT_FALSE(torch::equal(soft.slice(0, 14, 16), init.slice(0, 14, 16)));  // just outside
  EXPECT_TRUE(torch::equal(soft[32][40], plain[32][40].to(torch::kInt)) ||
              (soft[32][40] - plain[32][40].to(torch::kInt)).abs().max().item<int>() <= 1);

  // Validation: a mask needs an init image; paste-back a mask; an all-black mask.
  auto bad = golden_call(1.0);
  bad.init_image = torch::Tensor();
  EXPECT_THROW(pipeline.validate(bad), Error);
  bad = golden_call(1.0);
  bad.mask = torch::zeros({64, 64}, torch::kUInt8);
  EXPECT_THROW(pipeline.validate(bad), Error);
  bad = golden_call(1.0);
  bad.mask = torch::Tensor();
  bad.paste_back = true;
  EXPECT_THROW(pipeline.validate(bad), Error);
}

// SDXL takes the same path (StableDiffusionXLInpaintPipeline draws in the
// same order); not compared with diffusers here, only run: the image differs
// from img2img inside the mask and a hard paste-back keeps the rest exactly.
TEST(Inpaint, SDXLRuns) {
  SDGEN_REQUIRE_INPAINT();
  SDGEN_REQUIRE_SDXL();
  LoadOptions o;
  o.model_path = test::sdxl_model_dir();
  auto model = load_model(o);
  Pipeline pipeline(model);
  auto call = golden_call(0.75);
  call.steps = 4;
  call.sampler = Sampler::euler;
  call.paste_back = true;
  call.mask_blur = 0;
  const auto out = pipeline.generate(call).images_u8[0];
  const auto keep = (call.mask < 128).unsqueeze(2).expand({64, 64, 3});
  EXPECT_TRUE(torch::equal(out.masked_select(keep), call.init_image.masked_select(keep)));
  call.mask = torch::Tensor();
  call.paste_back = false;
  EXPECT_FALSE(torch::equal(pipeline.generate(call).images_u8[0], out));
}

// ---- through the binary ----------------------------------------------------------

std::string sdgen_cmd(const std::string& model, const std::string& extra_args = "") {
  return test::binary_dir() + "/sdgen --dtype fp32 --model '" + model + "' " + extra_args;
}

TEST(InpaintCli, GoldenMetadataPromptFileAndBadInput) {
  SDGEN_REQUIRE_INPAINT();
  const auto dir = test::temp_dir("inpaint-cli");
  write_png(dir + "/init.png", extra("inpaint.init_u8"));
  write_png(dir + "/mask.png",
            extra("inpaint.mask_u8").unsqueeze(2).repeat({1, 1, 3}).contiguous());
  const std::string model9 = sdgen_cmd(inpaint_file(), "--config '" + inpaint_configs() + "'");
  const std::string call =
      " -p 'a red fox in the snow' -n 'blurry, low quality' --seed 5 "
      "--steps 10 --sampler ddim -q --init-image " +
      dir + "/init.png --mask " + dir + "/mask.png";
  std::string log;
  ASSERT_EQ(test::run(model9 + " --info", &log), 0) << log;
  EXPECT_NE(log.find("SD1.x inpainting (UNet with 9 input channels"), std::string::npos) << log;
  ASSERT_EQ(test::run(model9 + call + " -o " + dir + "/nine.png", &log), 0) << log;
  auto png = read_png(dir + "/nine.png");
  EXPECT_LE(test::max_abs_diff(png.pixels, extra("inpaint9.ddim.image_u8")[0]), 1.0);
  const std::string params = png.text[0].second;
  for (const char* field : {"Denoising strength: 1", "Mask blur: 4"})
    EXPECT_NE(params.find(field), std::string::npos) << params;
  EXPECT_EQ(params.find("Paste back"), std::string::npos) << params;

  // The plain model, strength 0.75, then --paste-back; --from-png repeats
  // with the images given again and says so without them.
  const std::string model4 = sdgen_cmd(test::tiny_model_dir());
  ASSERT_EQ(test::run(model4 + call + " --strength 0.75 -o " + dir + "/four.png", &log), 0) << log;
  EXPECT_LE(test::max_abs_diff(read_png(dir + "/four.png").pixels,
                               extra("inpaint4_s075.ddim.image_u8")[0]),
            1.0);
  ASSERT_EQ(
      test::run(model4 + call + " --paste-back --mask-blur 2 -o " + dir + "/pasted.png", &log), 0)
      << log;
  const auto pasted = read_png(dir + "/pasted.png");
  EXPECT_NE(pasted.text[0].second.find("Mask blur: 2"), std::string::npos);
  EXPECT_NE(pasted.text[0].second.find("Paste back: True"), std::string::npos);
  EXPECT_TRUE(torch::equal(pasted.pixels.slice(0, 0, 8), extra("inpaint.init_u8").slice(0, 0, 8)));
  ASSERT_EQ(test::run(model4 + " --from-png " + dir + "/pasted.png --init-image " + dir +
                          "/init.png --mask " + dir + "/mask.png -q -o " + dir + "/again.png",
                      &log),
            0)
      << log;
  EXPECT_TRUE(torch::equal(read_png(dir + "/again.png").pixels, pasted.pixels));
  ASSERT_EQ(test::run(model4 + " --from-png " + dir + "/pasted.png -o " + dir + "/t2i.png", &log),
            0)
      << log;
  EXPECT_NE(log.find("was made by inpainting (Mask blur); give --init-image and --mask again"),
            std::string::npos)
      << log;

  // A prompt file: an inpainting line between two txt2img lines, each image
  // what it is alone.
  {
    std::ofstream f(dir + "/lines.jsonl");
    f << "{\"prompt\": \"a cat\", \"seed\": 1, \"output\": \"" << dir << "/l0.png\"}\n"
      << "{\"prompt\": \"a red fox in the snow\", \"negative_prompt\": \"blurry, low quality\", "
         "\"seed\": 5, \"steps\": 10, \"sampler\": \"ddim\", \"init_image\": \""
      << dir << "/init.png\", \"mask\": \"" << dir << "/mask.png\", \"output\": \"" << dir
      << "/l1.png\"}\n"
      << "{\"prompt\": \"a cat\", \"seed\": 1, \"output\": \"" << dir << "/l2.png\"}\n";
  }
  ASSERT_EQ(test::run(model9 + " --steps 10 -q --prompt-file " + dir + "/lines.jsonl", &log), 0)
      << log;
  EXPECT_TRUE(torch::equal(read_png(dir + "/l1.png").pixels, png.pixels));
  EXPECT_TRUE(torch::equal(read_png(dir + "/l0.png").pixels, read_png(dir + "/l2.png").pixels));

  // Bad input: one line, non-zero exit, no output.
  write_png(dir + "/black.png", torch::zeros({64, 64, 3}, torch::kUInt8));
  fs::copy_file(test::golden_path(), dir + "/fake.png", fs::copy_options::overwrite_existing);
  const std::string base = model4 + " -p fox --steps 2 -q ";
  for (const auto& [args, words] : std::vector<std::pair<std::string, std::string>>{
           {"--init-image " + dir + "/init.png --mask " + dir + "/fake.png", "not a PNG"},
           {"--init-image " + dir + "/init.png --mask " + dir + "/black.png", "all black"},
           {"--mask " + dir + "/mask.png", "needs --init-image"},
           {"--init-image " + dir + "/init.png --mask " + dir + "/missing.png", "missing.png"},
           {"--init-image " + dir + "/init.png --paste-back", "--paste-back needs --mask"},
           {"--init-image " + dir + "/init.png --mask " + dir + "/mask.png --mask-blur -1",
            "--mask-blur"}}) {
    EXPECT_NE(test::run(base + args + " -o " + dir + "/bad.png", &log), 0) << args;
    EXPECT_NE(log.find(words), std::string::npos) << args << ": " << log;
    EXPECT_EQ(std::count(log.begin(), log.end(), '\n'), 1) << log;
    EXPECT_FALSE(fs::exists(dir + "/bad.png")) << args;
  }
}

}  // namespace
}  // namespace sdgen
