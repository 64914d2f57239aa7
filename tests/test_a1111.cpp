// A1111 "parameters" metadata: the writer's exact text (field order,
// quoting), the reader on A1111's own output, round trips, and a PNG carrying
// the text still decoding with stb_image.

#include "sdgen/a1111.h"
#include "sdgen/image_io.h"
#include "sdgen/settings.h"
#include "sdgen/sha256.h"
#include "test_util.h"

#include <fstream>

namespace sdgen {
namespace {

Settings example_settings() {
  Settings r;
  r.prompt = "a cat, (sitting:1.2) on a mat";
  r.negative_prompt = "blurry, low quality";
  r.steps = 20;
  r.sampler = Sampler::dpmpp_2m;
  r.schedule = SigmaSchedule::karras;
  r.cfg_scale = 7;
  r.seed = 1234;
  r.width = 512;
  r.height = 768;
  r.clip_skip = 2;
  return r;
}

ImageMetadata example_meta() {
  ImageMetadata m;
  m.model_hash = "6ce0161689";
  m.model_name = "v1-5-pruned-emaonly";
  m.version = "0.1.0";
  return m;
}

TEST(A1111, WriterFieldOrderAndQuoting) {
  const std::string text =
      format_a1111_parameters(a1111_parameters(example_settings(), example_meta()));
  EXPECT_EQ(text,
            "a cat, (sitting:1.2) on a mat\n"
            "Negative prompt: blurry, low quality\n"
            "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
            "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
            "Version: sdgen 0.1.0");

  Settings r = example_settings();
  r.negative_prompt = "";
  r.sampler = Sampler::euler_a;
  r.schedule = SigmaSchedule::automatic;
  r.cfg_scale = 7.5;
  r.clip_skip = 1;
  r.batch_size = 2;
  r.init_image = "in.png";
  r.strength = 0.6;
  ImageMetadata m = example_meta();
  m.model_name = "my, model: v2";  // quoted as A1111 quotes
  m.batch_pos = 1;
  EXPECT_EQ(format_a1111_parameters(a1111_parameters(r, m)),
            "a cat, (sitting:1.2) on a mat\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
            "Model hash: 6ce0161689, Model: \"my, model: v2\", Denoising strength: 0.6, "
            "Batch size: 2, Batch pos: 1, Version: sdgen 0.1.0");
}

TEST(A1111, QuoteAndNumbers) {
  EXPECT_EQ(a1111_quote("plain value"), "plain value");
  EXPECT_EQ(a1111_quote("a, b"), "\"a, b\"");
  EXPECT_EQ(a1111_quote("k: v"), "\"k: v\"");
  EXPECT_EQ(a1111_quote("say \"hi\", ok\n"), "\"say \\\"hi\\\", ok\\n\"");
  EXPECT_EQ(a1111_quote("caf\xc3\xa9, b"), "\"caf\xc3\xa9, b\"");  // ensure_ascii=False
  EXPECT_EQ(a1111_unquote("\"say \\\"hi\\\", ok\\n\""), "say \"hi\", ok\n");
  EXPECT_EQ(a1111_unquote("\"not json"), "\"not json");
  EXPECT_EQ(a1111_unquote("\"bad \\q\""), "\"bad \\q\"");
  EXPECT_EQ(a1111_number(7), "7");
  EXPECT_EQ(a1111_number(7.5), "7.5");
  EXPECT_EQ(a1111_number(0.1), "0.1");
  EXPECT_EQ(std::stod(a1111_number(1.0 / 3)), 1.0 / 3);
  EXPECT_EQ(a1111_model_name("/m/v1-5.safetensors"), "v1-5");
}

TEST(A1111, ReadsA1111Output) {
  // As A1111 1.10 writes it (extra parameters with quoted values, multi-line prompts).
  const std::string text =
      "masterpiece, best quality,\n"
      "a girl in a field\n"
      "Negative prompt: lowres, bad anatomy\n"
      "extra line\n"
      "Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 3528423, Size: 512x768, "
      "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
      "Clip skip: 2, Lora hashes: \"add_detail: 7c6bad76eb54, more: 0123\", Hires upscale: 2, "
      "Version: v1.10.1";
  const auto p = parse_a1111_parameters(text);
  EXPECT_EQ(p.prompt, "masterpiece, best quality,\na girl in a field");
  EXPECT_EQ(p.negative_prompt, "lowres, bad anatomy\nextra line");
  ASSERT_NE(p.find("Lora hashes"), nullptr);
  EXPECT_EQ(*p.find("Lora hashes"), "add_detail: 7c6bad76eb54, more: 0123");
  EXPECT_EQ(*p.find("Version"), "v1.10.1");
  const auto reading = read_a1111_settings(p, "a.png");
  EXPECT_TRUE(reading.warnings.empty());
  EXPECT_TRUE(reading.errors.empty());
  EXPECT_EQ(*reading.model_hash, "6ce0161689");
  const Settings s = resolve_settings({&reading.settings});
  EXPECT_EQ(s.steps, 28);
  EXPECT_EQ(s.sampler, Sampler::dpmpp_2m);
  EXPECT_EQ(s.schedule, SigmaSchedule::karras);
  EXPECT_EQ(s.cfg_scale, 6.5);
  EXPECT_EQ(*s.seed, 3528423u);
  EXPECT_EQ(s.width, 512);
  EXPECT_EQ(s.height, 768);
  EXPECT_EQ(s.clip_skip, 2);
  EXPECT_EQ(s.strength, 0.45);

  // Fewer than 3 fields on the last line: it is part of the prompt.
  const auto short_text = parse_a1111_parameters("a photo\nSteps: 20, Seed: 1");
  EXPECT_EQ(short_text.prompt, "a photo\nSteps: 20, Seed: 1");
  EXPECT_TRUE(short_text.fields.empty());
  // Garbage never throws; values of the wrong type become warnings, values a
  // setting does not allow errors naming the flag and the PNG.
  const auto bad = read_a1111_settings(
      parse_a1111_parameters("x\nSteps: many, Seed: -3, Size: 5x, A: b"), "b.png");
  EXPECT_FALSE(bad.settings.has("steps"));
  EXPECT_FALSE(bad.settings.has("seed"));
  EXPECT_FALSE(bad.settings.has("width"));
  EXPECT_EQ(bad.warnings.size(), 3u);
  EXPECT_TRUE(bad.errors.empty());
  const auto wrong = read_a1111_settings(
      parse_a1111_parameters("x\nSteps: 5000, Sampler: DPM adaptive, Size: 60x64"), "w.png");
  ASSERT_EQ(wrong.errors.size(), 3u);
  EXPECT_EQ(wrong.errors[0], "--steps 5000 (from w.png): must be between 1 and 1000");
  EXPECT_NE(wrong.errors[1].find("--sampler DPM adaptive (from w.png): unknown sampler"),
            std::string::npos);
  EXPECT_NE(wrong.errors[2].find("--width 60 (from w.png): must be a positive multiple of 8"),
            std::string::npos);
  for (const std::string& junk :
       std::vector<std::string>{"", "\n\n", ":::", "\"", "a: \"b", std::string(1000, ',')})
    parse_a1111_parameters(junk);
}

TEST(A1111, RoundTrip) {
  Settings r = example_settings();
  r.negative_prompt = "text: \"quoted\", commas";
  r.eta = 0.3;
  r.guidance_rescale = 0.7;
  r.sampler = Sampler::ddim;
  r.long_prompt = LongPromptMode::truncate;
  r.batch_size = 3;
  ImageMetadata m = example_meta();
  m.batch_pos = 2;
  const auto reading = read_a1111_settings(
      parse_a1111_parameters(format_a1111_parameters(a1111_parameters(r, m))), "r.png");
  EXPECT_TRUE(reading.warnings.empty());
  EXPECT_TRUE(reading.errors.empty());
  EXPECT_EQ(*reading.model_name, m.model_name);
  EXPECT_EQ(*reading.batch_pos, 2);
  const Settings s = resolve_settings({&reading.settings});
  // Every setting A1111 records comes back as it was.
  for (const auto& spec : settings_table())
    if (!spec.a1111_label.empty() && spec.name != "model")
      EXPECT_EQ(spec.get(s), spec.get(r)) << spec.name;
  EXPECT_EQ(s.prompt, r.prompt);
  EXPECT_EQ(s.negative_prompt, r.negative_prompt);
  EXPECT_EQ(s.schedule, SigmaSchedule::karras);
  EXPECT_EQ(s.long_prompt, LongPromptMode::truncate);
}

TEST(A1111, PngWithParametersStillDecodes) {
  const auto dir = test::temp_dir("a1111");
  const auto pixels = torch::randint(0, 256, {24, 40, 3}, torch::kUInt8);
  const std::string params =
      format_a1111_parameters(a1111_parameters(example_settings(), example_meta()));
  write_png(dir + "/p.png", pixels, {{"parameters", params}});
  const auto png = read_png(dir + "/p.png");  // stb_image decodes the pixels
  EXPECT_TRUE(torch::equal(png.pixels, pixels));
  ASSERT_EQ(png.text.size(), 1u);
  EXPECT_EQ(png.text[0].first, "parameters");
  EXPECT_EQ(png.text[0].second, params);
}

TEST(Sha256, KnownVectorsAndModelHashCache) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Streaming in odd pieces gives the same digest.
  Sha256 h;
  const std::string data(1000, 'x');
  for (size_t i = 0; i < data.size(); i += 37) h.update(data.substr(i, 37));
  EXPECT_EQ(h.hex_digest(), sha256_hex(data));

  const auto dir = test::temp_dir("hash");
  setenv("XDG_CACHE_HOME", (dir + "/cache").c_str(), 1);
  { std::ofstream(dir + "/m.safetensors") << "abc"; }
  const std::string expected = sha256_hex("abc");
  EXPECT_EQ(model_sha256(dir + "/m.safetensors"), expected);
  EXPECT_TRUE(std::filesystem::exists(dir + "/cache/sdgen/hashes.json"));
  // A cached entry is used while size and mtime match: poison it to prove it.
  std::string cache;
  {
    std::ifstream in(dir + "/cache/sdgen/hashes.json");
    cache.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto at = cache.find(expected);
  ASSERT_NE(at, std::string::npos);
  cache.replace(at, 64, std::string(64, 'f'));
  { std::ofstream(dir + "/cache/sdgen/hashes.json") << cache; }
  EXPECT_EQ(model_sha256(dir + "/m.safetensors"), std::string(64, 'f'));
  EXPECT_EQ(model_sha256(dir + "/m.safetensors", /*use_cache=*/false), expected);
  // A diffusers folder is identified by its UNet weights.
  std::filesystem::create_directories(dir + "/folder/unet");
  { std::ofstream(dir + "/folder/unet/diffusion_pytorch_model.safetensors") << "abc"; }
  EXPECT_EQ(model_weights_file(dir + "/folder"),
            dir + "/folder/unet/diffusion_pytorch_model.safetensors");
  unsetenv("XDG_CACHE_HOME");
}

}  // namespace
}  // namespace sdgen
