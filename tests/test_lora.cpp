// LoRA: A1111's <lora:...> syntax, kohya files in both UNet naming styles on
// the tiny SD1 and SDXL models against diffusers' fused weights and images
// (../shared/golden/sd1-extras, sdxl-extras), exact un-merging, stacking, and
// the files that are refused.

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "sdgen/error.h"
#include "sdgen/extra_networks.h"
#include "sdgen/image_io.h"
#include "sdgen/lora.h"
#include "sdgen/pipeline.h"
#include "sdgen/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

// ---- the prompt syntax (A1111 extra_networks.parse_prompt + lora activate) --

TEST(LoraSyntax, TagsAreCutOutAndParsedAsA1111) {
  const auto p = parse_extra_networks("a cat, <lora:style:0.8> on a <lora:b> mat <hypernet:x:1>");
  EXPECT_EQ(p.prompt, "a cat,  on a  mat ");
  ASSERT_EQ(p.tags.size(), 3u);
  EXPECT_EQ(p.tags[2].type, "hypernet");
  const auto refs = lora_refs(p);
  ASSERT_EQ(refs.size(), 2u);
  EXPECT_EQ(refs[0], (LoraRef{"style", 0.8, 0.8}));
  EXPECT_EQ(refs[1], (LoraRef{"b", 1.0, 1.0}));

  struct Case {
    std::string prompt;
    LoraRef ref;
  };
  const std::vector<Case> cases = {
      {"<lora:a:0.5:0.25>", {"a", 0.5, 0.25}},                // te, unet
      {"<lora:a:1:unet=0.3>", {"a", 1, 0.3}},                 // named overrides
      {"<lora:a:te=0.2>", {"a", 0.2, 0.2}},                   // unet follows te
      {"<lora:a: 0.5 >", {"a", 0.5, 0.5}},                    // float() strips spaces
      {"<lyco:a:2>", {"a", 2, 2}},                            // the old LyCORIS name
      {"(<lora:a:0.5>:1.2) x", {"a", 0.5, 0.5}},              // inside emphasis
      {"<lora:my style v2:0.7>", {"my style v2", 0.7, 0.7}},  // spaces in the name
  };
  for (const auto& c : cases) {
    const auto r = lora_refs(parse_extra_networks(c.prompt));
    ASSERT_EQ(r.size(), 1u) << c.prompt;
    EXPECT_EQ(r[0], c.ref) << c.prompt;
  }
  // Not tags: left as text.
  for (const std::string text : {"a < b", "<lora:>", "<:x>", "<a b:c>", "x <lora:y"}) {
    const auto q = parse_extra_networks(text);
    EXPECT_EQ(q.prompt, text);
    EXPECT_TRUE(q.tags.empty()) << text;
  }
  // Bad weights and names: one error naming the tag.
  for (const std::string bad :
       {"<lora:a:heavy>", "<lora:a:1:nan>", "<lora: :1>", "<lora:a:te=x>"}) {
    try {
      lora_refs(parse_extra_networks(bad));
      ADD_FAILURE() << "accepted " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(parse_lora_argument("x.safetensors:0.5"), (LoraRef{"x.safetensors", 0.5, 0.5}));
  EXPECT_EQ(parse_lora_argument("dir:with/colon.safetensors"),
            (LoraRef{"dir:with/colon.safetensors", 1, 1}));
}

// ---- golden parity ------------------------------------------------------------

std::string extras(const std::string& name) { return test::shared_dir() + "/golden/" + name; }

torch::Tensor extras_golden(const std::string& file, const std::string& key) {
  static std::map<std::string, std::unique_ptr<SafeTensorsFile>> files;
  auto& f = files[file];
  if (!f) f = std::make_unique<SafeTensorsFile>(extras(file));
  EXPECT_TRUE(f->contains(key)) << key;
  return f->tensor(key).clone();
}

bool has_extras() {
  return fs::exists(extras("sd1-extras/golden.safetensors")) &&
         fs::exists(extras("sdxl-extras/golden.safetensors"));
}

#define SDGEN_REQUIRE_EXTRAS()                                                               \
  do {                                                                                       \
    SDGEN_REQUIRE_SHARED();                                                                  \
    if (!has_extras()) GTEST_SKIP() << "golden/sd1-extras or sdxl-extras missing; skipping"; \
  } while (0)

torch::Tensor weight_of(StableDiffusionModel& model, const std::string& golden_name) {
  // golden names: "unet.<param>" or "text_encoder[_2].text_model.<param>"
  auto take = [&](const std::string& prefix, torch::nn::Module& m) -> torch::Tensor {
    std::string name = golden_name.substr(prefix.size());
    if (name.rfind("text_model.", 0) == 0) name = name.substr(11);
    return m.named_parameters()[name].clone();
  };
  if (golden_name.rfind("unet.", 0) == 0) return take("unet.", *model.unet);
  if (golden_name.rfind("text_encoder_2.", 0) == 0)
    return take("text_encoder_2.", *model.text_encoder_2);
  return take("text_encoder.", *model.text_encoder);
}

void check_merged_layers(StableDiffusionModel& model, const std::string& file) {
  const SafeTensorsFile f(extras(file));
  int checked = 0;
  for (const auto& key : f.names()) {
    if (key.rfind("lora.merged.", 0) != 0) continue;
    const std::string name = key.substr(12);
    const double d = test::max_abs_diff(weight_of(model, name), f.tensor(key));
    EXPECT_LT(d, 2e-6) << name;
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

double u8_diff(const torch::Tensor& a, const torch::Tensor& b) { return test::max_abs_diff(a, b); }

TEST(LoraGolden, KohyaSD1BothNamingStyles) {
  SDGEN_REQUIRE_EXTRAS();
  LoadOptions o;
  o.model_path = test::tiny_model_dir();
  auto model = load_model(o);
  const auto base_request = test::golden_request("ddim");
  const auto before = Pipeline(model).generate(base_request).images_u8;
  for (const std::string name : {"lora_kohya", "lora_kohya_ldm"}) {
    const auto lora = read_lora(extras("sd1-extras/" + name + ".safetensors"), model);
    EXPECT_EQ(lora.format, "kohya");
    EXPECT_EQ(lora.unmatched, 0u) << name;
    EXPECT_EQ(lora.layers.size(), 90u) << name;
    EXPECT_EQ(lora.max_rank, 4);
    LoraMerger merger(model);
    merger.apply({{&lora, 0.8, 0.8}});
    check_merged_layers(model, "sd1-extras/golden.safetensors");
    auto result = Pipeline(model).generate(base_request);
    const double image_err = test::max_abs_diff(
        result.images, extras_golden("sd1-extras/golden.safetensors", "lora.ddim.image"));
    const double u8 = u8_diff(result.images_u8,
                              extras_golden("sd1-extras/golden.safetensors", "lora.ddim.image_u8"));
    std::cout << "[parity] LoRA " << name << " fused 0.8: image max err " << image_err
              << ", u8 max diff " << u8 << ", merge " << merger.last_apply_seconds() << " s\n";
    EXPECT_LT(image_err, 1e-4);
    EXPECT_LE(u8, 1.0);
    merger.apply({{&lora, 1.0, 1.0}});
    result = Pipeline(model).generate(base_request);
    EXPECT_LE(u8_diff(result.images_u8,
                      extras_golden("sd1-extras/golden.safetensors", "lora.scale1.ddim.image_u8")),
              1.0);
    // Un-merged: the model's weights and image bit for bit as before.
    merger.restore();
    EXPECT_TRUE(torch::equal(Pipeline(model).generate(base_request).images_u8, before)) << name;
  }
}

TEST(LoraGolden, KohyaSDXLBothNamingStyles) {
  SDGEN_REQUIRE_EXTRAS();
  SDGEN_REQUIRE_SDXL();
  LoadOptions o;
  o.model_path = test::sdxl_model_dir();
  auto model = load_model(o);
  const auto call = test::request_from_meta(test::sdxl_golden("pipe.euler.meta"), "euler");
  for (const std::string name : {"lora_kohya_sdxl", "lora_kohya_sdxl_dnames"}) {
    const auto lora = read_lora(extras("sdxl-extras/" + name + ".safetensors"), model);
    EXPECT_EQ(lora.unmatched, 0u) << name;
    EXPECT_EQ(lora.layers.size(), 344u) << name;
    EXPECT_EQ(lora.family, "SDXL");
    LoraMerger merger(model);
    merger.apply({{&lora, 0.8, 0.8}});
    check_merged_layers(model, "sdxl-extras/golden.safetensors");
    const auto result = Pipeline(model).generate(call);
    const double u8 = u8_diff(
        result.images_u8, extras_golden("sdxl-extras/golden.safetensors", "lora.euler.image_u8"));
    const double image_err = test::max_abs_diff(
        result.images, extras_golden("sdxl-extras/golden.safetensors", "lora.euler.image"));
    std::cout << "[parity] SDXL LoRA " << name << ": image max err " << image_err
              << ", u8 max diff " << u8 << "\n";
    EXPECT_LT(image_err, 1e-4);
    EXPECT_LE(u8, 1.0);
  }
}

// Two LoRAs stack (W + w1 d1 + w2 d2); weight 0 is no LoRA, byte for byte;
// an SDXL LoRA is refused on SD1 with one line.
TEST(Lora, StackingZeroWeightAndFamilies) {
  SDGEN_REQUIRE_EXTRAS();
  LoadOptions o;
  o.model_path = test::tiny_model_dir();
  auto model = load_model(o);
  const auto a = read_lora(extras("sd1-extras/lora_kohya.safetensors"), model);
  const auto b = read_lora(extras("sd1-extras/lora_kohya_ldm.safetensors"), model);
  const std::string name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
  const auto original = model.unet->named_parameters()[name].clone();
  LoraMerger merger(model);
  merger.apply({{&a, 0.3, 0.3}, {&b, 0.5, 0.5}});
  const auto stacked = model.unet->named_parameters()[name].clone();
  merger.apply({{&a, 0.8, 0.8}});
  const auto single = model.unet->named_parameters()[name].clone();
  // Same tensors at 0.3 + 0.5 = 0.8 in total.
  EXPECT_LT(test::max_abs_diff(stacked, single), 1e-6);
  EXPECT_FALSE(torch::equal(single, original));
  merger.apply({{&a, 0.0, 0.0}});
  EXPECT_TRUE(torch::equal(model.unet->named_parameters()[name], original));
  // te / unet weights apply to their parts only.
  merger.apply({{&a, 0.0, 1.0}});
  EXPECT_TRUE(torch::equal(
      model.text_encoder->named_parameters()["encoder.layers.0.self_attn.q_proj.weight"],
      weight_of(model, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight")));
  merger.restore();
  EXPECT_TRUE(torch::equal(model.unet->named_parameters()[name], original));
  try {
    read_lora(extras("sdxl-extras/lora_kohya_sdxl.safetensors"), model);
    ADD_FAILURE() << "an SDXL LoRA was accepted for SD1";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("SDXL LoRA"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sdgen

namespace sdgen {
namespace {

// ---- through the binary ----------------------------------------------------------

std::string sdgen_bin() { return test::binary_dir() + "/sdgen"; }

torch::Tensor png_pixels(const std::string& path) { return read_png(path).pixels; }

// <lora:NAME:W> in the prompt, found in --lora-dir's subfolders, gives
// diffusers' fused image; --from-png reproduces it; a prompt file that
// switches LoRA sets gives each image the bytes a fresh process gives it.
TEST(LoraCli, PromptTagsFromPngAndPromptFiles) {
  SDGEN_REQUIRE_EXTRAS();
  const std::string dir = test::temp_dir("lora-cli");
  fs::create_directories(dir + "/loras/styles");
  fs::copy_file(extras("sd1-extras/lora_kohya.safetensors"),
                dir + "/loras/styles/kohya.safetensors");
  fs::copy_file(extras("sd1-extras/lora_kohya_ldm.safetensors"), dir + "/loras/ldm.safetensors");
  const std::string base = sdgen_bin() + " -m '" + test::tiny_model_dir() + "' --lora-dir '" + dir +
                           "/loras' -q --steps 10 -s 42 -W 64 -H 64 -n 'blurry, low quality' ";
  std::string log;
  ASSERT_EQ(
      test::run(base + "-p 'a photograph of an astronaut riding a horse <lora:kohya:0.8>' -o '" +
                    dir + "/a.png'",
                &log),
      0)
      << log;
  EXPECT_LE(
      test::max_abs_diff(png_pixels(dir + "/a.png").unsqueeze(0),
                         extras_golden("sd1-extras/golden.safetensors", "lora.ddim.image_u8")),
      1.0);
  std::string params;
  ASSERT_EQ(test::run(sdgen_bin() + " --show-params '" + dir + "/a.png'", &params), 0);
  EXPECT_NE(params.find("<lora:kohya:0.8>"), std::string::npos) << params;  // kept, as A1111
  EXPECT_NE(params.find("Lora hashes: \"kohya: "), std::string::npos) << params;
  ASSERT_EQ(test::run(sdgen_bin() + " -m '" + test::tiny_model_dir() + "' --lora-dir '" + dir +
                          "/loras' -q --from-png '" + dir + "/a.png' -o '" + dir + "/b.png'",
                      &log),
            0)
      << log;
  EXPECT_TRUE(torch::equal(png_pixels(dir + "/a.png"), png_pixels(dir + "/b.png")));

  // --lora FILE:W is the same LoRA by path.
  ASSERT_EQ(test::run(base + "-p 'a photograph of an astronaut riding a horse' --lora '" + dir +
                          "/loras/styles/kohya.safetensors:0.8' -o '" + dir + "/c.png'",
                      &log),
            0)
      << log;
  EXPECT_TRUE(torch::equal(png_pixels(dir + "/a.png"), png_pixels(dir + "/c.png")));

  // Separate runs, then one prompt file alternating sets (and none).
  const std::vector<std::string> prompts = {"a fox <lora:kohya:0.8>", "a fox", "a fox <lora:ldm:1>",
                                            "a fox <lora:kohya:0.5> <lora:ldm:0.3>", "a fox"};
  std::ofstream lines(dir + "/p.txt");
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string alone = dir + "/alone" + std::to_string(i) + ".png";
    ASSERT_EQ(test::run(base + "-p '" + prompts[i] + "' -o '" + alone + "'", &log), 0) << log;
    lines << R"({"prompt": ")" << prompts[i] << R"(", "output": ")" << dir << "/file" << i
          << R"(.png"})"
          << "\n";
  }
  lines.close();
  ASSERT_EQ(test::run(base + "--prompt-file '" + dir + "/p.txt'", &log), 0) << log;
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_TRUE(torch::equal(png_pixels(dir + "/alone" + std::to_string(i) + ".png"),
                             png_pixels(dir + "/file" + std::to_string(i) + ".png")))
        << prompts[i];
  // A "loras" key in a line does what --lora does.
  {
    std::ofstream f(dir + "/q.txt");
    f << R"({"prompt": "a photograph of an astronaut riding a horse", "loras": [")" << dir
      << R"(/loras/styles/kohya.safetensors:0.8"], "output": ")" << dir << R"(/d.png"})"
      << "\n";
  }
  ASSERT_EQ(test::run(base + "--prompt-file '" + dir + "/q.txt'", &log), 0) << log;
  EXPECT_TRUE(torch::equal(png_pixels(dir + "/a.png"), png_pixels(dir + "/d.png")));
}

}  // namespace
}  // namespace sdgen
