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
#include "sdgen/textual_inversion.h"
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
    // diffusers' unfused LoRA at the same scale draws the same image.
    EXPECT_LE(u8_diff(result.images_u8, extras_golden("sdxl-extras/golden.safetensors",
                                                      "lora.unfused.euler.image_u8")),
              1.0);
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

// Un-merging restores every layer bit for bit: from the mapped checkpoint
// file for a CPU model (no copies held), from copies when the model has no
// file sources, and in a bf16 model loaded from a float32 file.
TEST(Lora, RestoresFromTheFileOrFromCopies) {
  SDGEN_REQUIRE_EXTRAS();
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (const bool drop_sources : {false, true}) {
      LoadOptions o;
      o.model_path = test::tiny_model_dir();
      o.dtype = dtype;
      auto model = load_model(o);
      ASSERT_FALSE(model.weight_sources["unet"].empty());
      if (drop_sources) model.weight_sources.clear();
      std::vector<torch::Tensor> before;
      for (auto& p : model.unet->parameters()) before.push_back(p.clone());
      for (auto& p : model.text_encoder->parameters()) before.push_back(p.clone());
      const auto lora = read_lora(extras("sd1-extras/lora_kohya.safetensors"), model);
      LoraMerger merger(model);
      int64_t touched_bytes = 0;
      for (const auto& layer : lora.layers)
        touched_bytes +=
            weight_of(model,
                      (layer.target == LoraTarget::unet ? "unet." : "text_encoder.text_model.") +
                          layer.parameter)
                .nbytes();
      EXPECT_EQ(merger.new_copy_bytes({{&lora, 0.8, 0.8}}), drop_sources ? touched_bytes : 0);
      merger.apply({{&lora, 0.8, 0.8}});
      EXPECT_EQ(merger.copies_kept(), drop_sources ? lora.layers.size() : 0u);
      EXPECT_EQ(merger.new_copy_bytes({{&lora, 0.8, 0.8}}), 0);
      merger.apply({{&lora, -0.5, 1.5}});
      merger.restore();
      size_t i = 0, changed = 0;
      for (auto& p : model.unet->parameters()) changed += !torch::equal(p, before[i++]);
      for (auto& p : model.text_encoder->parameters()) changed += !torch::equal(p, before[i++]);
      EXPECT_EQ(changed, 0u) << c10::toString(dtype) << (drop_sources ? " copies" : " file");
    }
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

namespace sdgen {
namespace {

// ---- textual inversion ---------------------------------------------------------

// A1111 calls an embedding by its file name: "a photograph of ti_tok riding a
// horse" is diffusers' "a photograph of <tok> <tok>_1 riding a horse" after
// load_textual_inversion (the same two vectors in the same places).
TEST(TextualInversion, GoldenSD1ByFileName) {
  SDGEN_REQUIRE_EXTRAS();
  LoadOptions o;
  o.model_path = test::tiny_model_dir();
  auto model = load_model(o);
  const auto ti = read_textual_inversion(extras("sd1-extras/ti_tok.safetensors"), model);
  EXPECT_EQ(ti.name, "ti_tok");
  EXPECT_EQ(ti.count(), 2);
  EXPECT_TRUE(
      torch::equal(ti.vectors, extras_golden("sd1-extras/golden.safetensors", "ti.emb_params")));
  Pipeline pipeline(model);
  pipeline.set_embeddings({ti});
  const std::string prompt = "a photograph of ti_tok riding a horse";
  const auto context = pipeline.encode_prompts({prompt}, 1);
  const double text_err =
      test::max_abs_diff(context, extras_golden("sd1-extras/golden.safetensors", "ti.text.last"));
  EXPECT_LT(text_err, 1e-5);
  auto r = test::golden_request("ddim");
  r.prompt = prompt;
  const auto result = pipeline.generate(r);
  const double u8 = test::max_abs_diff(
      result.images_u8, extras_golden("sd1-extras/golden.safetensors", "ti.ddim.image_u8"));
  std::cout << "[parity] textual inversion: text max err " << text_err << ", u8 max diff " << u8
            << "\n";
  EXPECT_LE(u8, 1.0);
  EXPECT_EQ(pipeline.embeddings_used(), (std::vector<std::string>{"ti_tok"}));
  // Its two vectors take two token places in the 75-token chunks; in the
  // negative prompt too; emphasis weights them.
  std::string long_prompt;
  for (int i = 0; i < 36; ++i) long_prompt += "red fox ";  // 72 tokens: + 2 vectors fit
  EXPECT_EQ(pipeline.prompt_chunk_count(long_prompt + "ti_tok"), 1);
  EXPECT_EQ(pipeline.prompt_chunk_count(long_prompt + "fox fox ti_tok"), 2);  // 72 + 2 + 2
  const auto plain = pipeline.encode_prompts({"a cat"}, 1);
  EXPECT_FALSE(torch::allclose(pipeline.encode_prompts({"a cat ti_tok"}, 1), plain));
  r.prompt = "a cat";
  r.negative_prompt = "ti_tok, blurry";
  r.steps = 2;
  pipeline.generate(r);
  EXPECT_EQ(pipeline.embeddings_used(), (std::vector<std::string>{"ti_tok"}));
  // Without the embedding the name is ordinary text.
  Pipeline without(model);
  EXPECT_FALSE(torch::allclose(without.encode_prompts({prompt}, 1), context));
}

// A1111's layouts: any single key ("string_to_param.*", a 1-D vector) and
// SDXL's clip_l + clip_g; wrong widths and pickles refused with one line.
TEST(TextualInversion, FileLayouts) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = test::temp_dir("ti-files");
  LoadOptions o;
  o.model_path = test::tiny_model_dir();
  auto model = load_model(o);
  write_safetensors(dir + "/a.safetensors", {{"string_to_param.*", torch::randn({3, 32})}});
  EXPECT_EQ(read_textual_inversion(dir + "/a.safetensors", model).count(), 3);
  write_safetensors(dir + "/one.safetensors", {{"vec", torch::randn({32})}});
  EXPECT_EQ(read_textual_inversion(dir + "/one.safetensors", model).count(), 1);
  auto refused = [&](const std::string& file, const std::string& words) {
    try {
      read_textual_inversion(file, model);
      ADD_FAILURE() << "accepted " << file;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  write_safetensors(dir + "/wide.safetensors", {{"emb_params", torch::randn({2, 768})}});
  refused(dir + "/wide.safetensors", "is not [vectors, 32]");
  write_safetensors(dir + "/two.safetensors",
                    {{"a", torch::randn({2, 32})}, {"b", torch::randn({2, 32})}});
  refused(dir + "/two.safetensors", "holds 2 tensors");
  write_safetensors(dir + "/xl.safetensors",
                    {{"clip_l", torch::randn({2, 32})}, {"clip_g", torch::randn({2, 64})}});
  refused(dir + "/xl.safetensors", "SDXL embedding");
  refused(dir + "/old.pt", "pickled");
  if (test::has_sdxl()) {
    LoadOptions x;
    x.model_path = test::sdxl_model_dir();
    auto xl = load_model(x);
    const auto e = read_textual_inversion(dir + "/xl.safetensors", xl);
    EXPECT_EQ(e.vectors_2.size(1), 64);
    Pipeline pipeline(xl);
    const auto plain = pipeline.encode_prompt_embeddings({"a cat xl"}, 1);
    pipeline.set_embeddings({e});
    const auto with = pipeline.encode_prompt_embeddings({"a cat xl"}, 1);
    EXPECT_FALSE(torch::allclose(with.context, plain.context));
    EXPECT_EQ(pipeline.embeddings_used(), (std::vector<std::string>{"xl"}));
  }
}

}  // namespace
}  // namespace sdgen

namespace sdgen {
namespace {

// --embeddings-dir: the file's name in the prompt calls it (diffusers' image),
// "TI hashes" is written, --from-png reproduces, pickles and files for
// another model are skipped with a warning.
TEST(TextualInversionCli, NameInPromptHashesAndWarnings) {
  SDGEN_REQUIRE_EXTRAS();
  const std::string dir = test::temp_dir("ti-cli");
  fs::create_directories(dir + "/emb/sub");
  fs::copy_file(extras("sd1-extras/ti_tok.safetensors"), dir + "/emb/sub/ti_tok.safetensors");
  std::ofstream(dir + "/emb/old.pt") << "PK pickle";
  write_safetensors(dir + "/emb/wide.safetensors", {{"emb_params", torch::zeros({1, 768})}});
  const std::string base = sdgen_bin() + " -m '" + test::tiny_model_dir() + "' --embeddings-dir '" +
                           dir + "/emb' --steps 10 -s 42 -W 64 -H 64 -n 'blurry, low quality' ";
  std::string log;
  ASSERT_EQ(
      test::run(base + "-p 'a photograph of ti_tok riding a horse' -o '" + dir + "/a.png'", &log),
      0)
      << log;
  EXPECT_NE(log.find("pickled embeddings skipped (old.pt)"), std::string::npos) << log;
  EXPECT_NE(log.find("embedding skipped: " + dir + "/emb/wide.safetensors"), std::string::npos)
      << log;
  EXPECT_LE(test::max_abs_diff(png_pixels(dir + "/a.png").unsqueeze(0),
                               extras_golden("sd1-extras/golden.safetensors", "ti.ddim.image_u8")),
            1.0);
  std::string params;
  ASSERT_EQ(test::run(sdgen_bin() + " --show-params '" + dir + "/a.png'", &params), 0);
  EXPECT_NE(params.find("TI hashes: \"ti_tok: "), std::string::npos) << params;
  ASSERT_EQ(test::run(sdgen_bin() + " -m '" + test::tiny_model_dir() + "' --embeddings-dir '" +
                          dir + "/emb' -q --from-png '" + dir + "/a.png' -o '" + dir + "/b.png'",
                      &log),
            0)
      << log;
  EXPECT_TRUE(torch::equal(png_pixels(dir + "/a.png"), png_pixels(dir + "/b.png")));
}

}  // namespace
}  // namespace sdgen

namespace sdgen {
namespace {

// The other formats, against the formula W + w * alpha / rank * up @ down
// (LoHa: (w1a @ w1b) * (w2a @ w2b)): PEFT keys (alpha = rank when absent),
// LoCon 3x3 convolutions in both UNet naming styles, LoHa, unmatched layers
// counted, LoKr refused.
TEST(Lora, OtherFormatsFollowTheFormula) {
  SDGEN_REQUIRE_EXTRAS();
  const std::string dir = test::temp_dir("lora-formats");
  LoadOptions o;
  o.model_path = test::tiny_model_dir();
  auto model = load_model(o);
  auto unet_w = [&](const std::string& n) { return model.unet->named_parameters()[n].clone(); };
  auto text_w = [&](const std::string& n) {
    return model.text_encoder->named_parameters()[n].clone();
  };
  const std::string q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight";
  const std::string k = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k.weight";
  const std::string conv = "down_blocks.0.resnets.0.conv1.weight";
  const std::string tq = "encoder.layers.0.self_attn.q_proj.weight";
  const auto q0 = unet_w(q), k0 = unet_w(k), conv0 = unet_w(conv), tq0 = text_w(tq);
  torch::manual_seed(3);
  const auto a = torch::randn({4, 32}), b = torch::randn({32, 4});
  const auto ta = torch::randn({4, 32}), tb = torch::randn({32, 4});
  const auto cd = torch::randn({4, 32, 3, 3}), cu = torch::randn({32, 4, 1, 1});
  const auto w1a = torch::randn({32, 2}), w1b = torch::randn({2, 32}), w2a = torch::randn({32, 2}),
             w2b = torch::randn({2, 32});
  write_safetensors(
      dir + "/peft.safetensors",
      {{"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", a},
       {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight", b},
       {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight", ta},
       {"text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight", tb},
       {"unet.no_such_block.lora_A.weight", a},
       {"unet.no_such_block.lora_B.weight", b}});
  const auto peft = read_lora(dir + "/peft.safetensors", model);
  EXPECT_EQ(peft.format, "peft");
  EXPECT_EQ(peft.unmatched, 1u);
  EXPECT_EQ(peft.te_layers, 1u);
  LoraMerger merger(model);
  merger.apply({{&peft, 0.5, 0.7}});
  EXPECT_LT(test::max_abs_diff(unet_w(q), q0 + 0.7 * torch::matmul(b, a)), 1e-5);
  EXPECT_LT(test::max_abs_diff(text_w(tq), tq0 + 0.5 * torch::matmul(tb, ta)), 1e-5);
  merger.restore();

  for (const std::string name :
       {"lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_input_blocks_1_0_in_layers_2"}) {
    write_safetensors(dir + "/locon.safetensors", {{name + ".lora_down.weight", cd},
                                                   {name + ".lora_up.weight", cu},
                                                   {name + ".alpha", torch::tensor(2.0)}});
    const auto locon = read_lora(dir + "/locon.safetensors", model);
    EXPECT_TRUE(locon.conv) << name;
    merger.apply({{&locon, 1.0, 0.8}});
    const auto expected =
        conv0 +
        0.8 * (2.0 / 4.0) * torch::matmul(cu.flatten(1), cd.flatten(1)).reshape(conv0.sizes());
    EXPECT_LT(test::max_abs_diff(unet_w(conv), expected), 1e-5) << name;
    merger.restore();
  }

  const std::string lk = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k";
  write_safetensors(dir + "/loha.safetensors", {{lk + ".hada_w1_a", w1a},
                                                {lk + ".hada_w1_b", w1b},
                                                {lk + ".hada_w2_a", w2a},
                                                {lk + ".hada_w2_b", w2b},
                                                {lk + ".alpha", torch::tensor(1.0)}});
  const auto loha = read_lora(dir + "/loha.safetensors", model);
  merger.apply({{&loha, 1.0, 1.0}});
  EXPECT_LT(
      test::max_abs_diff(unet_w(k), k0 + 0.5 * torch::matmul(w1a, w1b) * torch::matmul(w2a, w2b)),
      1e-5);
  merger.restore();
  EXPECT_TRUE(torch::equal(unet_w(k), k0));
  EXPECT_TRUE(torch::equal(unet_w(conv), conv0));

  write_safetensors(dir + "/lokr.safetensors", {{lk + ".lokr_w1", torch::randn({4, 4})},
                                                {lk + ".lokr_w2", torch::randn({8, 8})}});
  try {
    read_lora(dir + "/lokr.safetensors", model);
    ADD_FAILURE() << "LoKr accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("LoKr"), std::string::npos) << e.what();
  }
  // What --info shows without a model.
  const auto s = summarize_lora(extras("sd1-extras/lora_kohya.safetensors"));
  EXPECT_EQ(s.format, "kohya");
  EXPECT_EQ(s.layers, 90u);
  EXPECT_EQ(s.max_rank, 4);
  EXPECT_EQ(summarize_lora(extras("sdxl-extras/lora_kohya_sdxl.safetensors")).family, "SDXL");
}

}  // namespace
}  // namespace sdgen
