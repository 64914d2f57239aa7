// The settings table (sdgen/settings.def): every row consistent, values
// through every source (flag text, prompt-file JSON, A1111 text) checked by
// the same rule, the layers resolved in order, enums and the sampler registry.

#include <set>

#include "sdgen/a1111.h"
#include "sdgen/error.h"
#include "sdgen/schedulers/scheduler.h"
#include "sdgen/settings.h"
#include "test_util.h"

namespace sdgen {
namespace {

using nlohmann::json;

TEST(Settings, RowsAreConsistent) {
  std::set<std::string> names, flags, line_keys, out_keys, api_keys;
  const Settings defaults;
  for (const auto& s : settings_table()) {
    EXPECT_TRUE(names.insert(s.name).second) << s.name;
    EXPECT_EQ(s.flag.rfind("--", 0), 0u) << s.name;
    EXPECT_TRUE(flags.insert(s.flag).second) << s.flag;
    EXPECT_EQ(find_setting_by_flag(s.flag), &s);
    EXPECT_EQ(&setting(s.name), &s);
    if (!s.line_key.empty()) EXPECT_TRUE(line_keys.insert(s.line_key).second) << s.line_key;
    if (!s.out_key.empty()) EXPECT_TRUE(out_keys.insert(s.out_key).second) << s.out_key;
    if (!s.api_key.empty()) EXPECT_TRUE(api_keys.insert(s.api_key).second) << s.api_key;
    EXPECT_FALSE(s.help.empty()) << s.name;
    // The default survives set(get()) and, where it is allowed, the check.
    Settings copy;
    s.set(copy, s.get(defaults));
    EXPECT_EQ(s.get(copy), s.get(defaults)) << s.name;
    if (!s.default_text.empty()) EXPECT_EQ(s.from_text(s.default_text), s.get(defaults)) << s.name;
  }
  // The 38 of cli::Options before the table, --vae, --timestep-spacing,
  // SDXL's six size/crop settings, --lora, --lora-dir, --embeddings-dir and
  // inpainting's --mask, --paste-back and --mask-blur, and --max-batch.
  EXPECT_EQ(names.size(), 53u);
  EXPECT_EQ(prompt_file_keys(), std::vector<std::string>({"prompt",
                                                          "negative_prompt",
                                                          "steps",
                                                          "sampler",
                                                          "scheduler",
                                                          "timestep_spacing",
                                                          "cfg_scale",
                                                          "seed",
                                                          "width",
                                                          "height",
                                                          "loras",
                                                          "init_image",
                                                          "strength",
                                                          "mask",
                                                          "paste_back",
                                                          "mask_blur",
                                                          "clip_skip",
                                                          "eta",
                                                          "guidance_rescale",
                                                          "original_size",
                                                          "target_size",
                                                          "crop_top_left",
                                                          "negative_original_size",
                                                          "negative_target_size",
                                                          "negative_crop_top_left",
                                                          "batch_size",
                                                          "output"}));
  EXPECT_EQ(find_setting_by_flag("-W"), &setting("width"));
  EXPECT_EQ(find_setting_by_line_key("cfg_scale"), &setting("cfg_scale"));
  EXPECT_EQ(find_setting_by_line_key("model"), nullptr);  // a run setting
  EXPECT_EQ(find_setting("nope"), nullptr);
}

// A flag's text and a prompt-file line's JSON go through the same rule.
TEST(Settings, TextAndJsonShareOneRule) {
  struct Case {
    const char* name;
    const char* text;
    json value;
    bool allowed;
  };
  const std::vector<Case> cases = {
      {"steps", "20", 20, true},
      {"steps", "0", 0, false},
      {"steps", "1001", 1001, false},
      {"width", "64", 64, true},
      {"width", "60", 60, false},
      {"width", "8200", 8200, false},
      {"cfg_scale", "0", 0.0, true},
      {"cfg_scale", "-1", -1.0, false},
      {"strength", "1", 1.0, true},
      {"strength", "0", 0.0, false},
      {"eta", "1", 1.0, true},
      {"eta", "1.5", 1.5, false},
      {"batch_size", "64", 64, true},
      {"batch_size", "65", 65, false},
      {"clip_skip", "2", 2, true},
      {"guidance_rescale", "1.01", 1.01, false},
      {"sampler", "Euler a", "Euler a", true},
      {"sampler", "euler_b", "euler_b", false},
      {"schedule", "Karras", "Karras", true},
      {"schedule", "exponential", "exponential", false},
      {"output", "{nope}.png", "{nope}.png", false},
      {"output", "a/{index}.png", "a/{index}.png", true},
      {"original_size", "1536x1024", "1536x1024", true},
      {"original_size", "", "", true},  // unset: the image size
      {"original_size", "1536", "1536", false},
      {"original_size", "0x64", "0x64", false},
      {"target_size", "64x99999", "64x99999", false},
      {"crop_top_left", "0,0", "0,0", true},
      {"crop_top_left", "-1,0", "-1,0", false},
      {"negative_crop_top_left", "3x4", "3x4", false},
      {"timestep_spacing", "trailing", "trailing", true},
      {"timestep_spacing", "sgm_uniform", "sgm_uniform", false},
  };
  for (const auto& c : cases) {
    const SettingSpec& spec = setting(c.name);
    std::string text_error, json_error;
    json from_text, from_json;
    try {
      from_text = spec.from_text(c.text);
    } catch (const SettingError& e) {
      text_error = e.what();
      EXPECT_FALSE(e.unreadable()) << c.name << " " << c.text;
    }
    try {
      from_json = spec.check(c.value);
    } catch (const SettingError& e) {
      json_error = e.what();
    }
    EXPECT_EQ(text_error.empty(), c.allowed) << c.name << " " << c.text << ": " << text_error;
    EXPECT_EQ(text_error, json_error) << c.name << " " << c.text;
    EXPECT_EQ(from_text, from_json) << c.name << " " << c.text;
  }
  // Values of the wrong type are "unreadable" (an A1111 field is then skipped).
  for (const auto& [name, text] : std::vector<std::pair<std::string, std::string>>{
           {"steps", "ten"}, {"steps", "2.5"}, {"cfg_scale", "x"}, {"seed", "-3"}}) {
    try {
      setting(name).from_text(text);
      ADD_FAILURE() << name << " " << text;
    } catch (const SettingError& e) {
      EXPECT_TRUE(e.unreadable()) << name << " " << text;
    }
  }
  // Enum names come out canonical.
  EXPECT_EQ(setting("sampler").from_text("EulerAncestralDiscreteScheduler"), "euler_a");
  EXPECT_EQ(setting("schedule").check("Karras"), "karras");
  EXPECT_EQ(setting("prediction").from_text("v"), "v_prediction");
  EXPECT_EQ(setting("device").from_text("CUDA:1"), "cuda:1");
  EXPECT_THROW(setting("device").from_text("cuda:x"), SettingError);
  EXPECT_EQ(setting("dtype").from_text("bfloat16"), "bf16");
  EXPECT_EQ(setting("seed").check(json(18446744073709551615ull)), 18446744073709551615ull);
}

TEST(Settings, LayersResolveInOrder) {
  SettingLayer model("model"), png("x.png"), cli("cli"), line("line 3");
  model.set("steps", 10);
  model.set("guidance_rescale", 0.7);
  png.set("steps", 20);
  png.set("sampler", "euler_a");
  cli.set("steps", 30);
  line.set("steps", 40);
  const std::vector<const SettingLayer*> all = {&model, &png, &cli, &line};
  EXPECT_EQ(resolve_settings(all).steps, 40);
  EXPECT_EQ(resolve_settings({&model, &png, &cli}).steps, 30);
  EXPECT_EQ(resolve_settings({&model, &png}).steps, 20);
  EXPECT_EQ(resolve_settings({&model, nullptr}).steps, 10);
  EXPECT_EQ(resolve_settings({}).steps, 50);  // built-in default
  const Settings s = resolve_settings(all);
  EXPECT_EQ(s.sampler, Sampler::euler_a);
  EXPECT_EQ(s.guidance_rescale, 0.7);
  EXPECT_EQ(s.cfg_scale, 7.5);
  EXPECT_EQ(setting_source(all, "steps"), &line);
  EXPECT_EQ(setting_source(all, "sampler"), &png);
  EXPECT_EQ(setting_source(all, "cfg_scale"), nullptr);
}

TEST(Settings, SamplerRegistryNamesEveryScheduler) {
  std::set<Sampler> seen;
  SchedulerConfig config;
  config.raw = config.to_json();
  for (const auto& info : sampler_registry()) {
    EXPECT_TRUE(seen.insert(info.id).second) << info.name;
    EXPECT_EQ(parse_sampler(info.name), info.id);
    EXPECT_EQ(make_scheduler(info.id, config)->name(), info.name);
    if (*info.diffusers_class && info.id != Sampler::dpmpp_2m)
      EXPECT_EQ(find_sampler(info.diffusers_class), info.id) << info.diffusers_class;
  }
  EXPECT_EQ(seen.size(), 11u);
  EXPECT_EQ(scheduler_names(), sampler_names());
  EXPECT_EQ(parse_sampler("PLMS"), Sampler::pndm);
  EXPECT_EQ(parse_sampler("DPM++ 2M"), Sampler::dpmpp_2m);
  EXPECT_EQ(parse_sampler("dpm++ 2m karras"), Sampler::dpmpp_2m_karras);
  EXPECT_EQ(parse_sampler("heundiscrete"), Sampler::heun);
  EXPECT_THROW(parse_sampler(""), Error);
  EXPECT_THROW(parse_sampler("DPM adaptive"), Error);
}

// The writer follows the table's order, which is A1111's.
TEST(Settings, A1111FieldsInTableOrder) {
  Settings s;
  s.prompt = "p";
  s.negative_prompt = "n";
  s.seed = 1;
  s.schedule = SigmaSchedule::normal;
  s.init_image = "in.png";
  s.clip_skip = 2;
  s.eta = 0.1;
  s.guidance_rescale = 0.5;
  s.batch_size = 2;
  s.long_prompt = LongPromptMode::truncate;
  ImageMetadata m;
  m.model_hash = "0123456789";
  m.model_name = "model";
  m.vae_hash = "abcdef0123";
  m.vae_name = "vae-ft-mse-840000-ema-pruned.safetensors";
  m.version = "9";
  std::vector<std::string> labels;
  for (const auto& [k, v] : a1111_parameters(s, m).fields) labels.push_back(k);
  EXPECT_EQ(labels,
            std::vector<std::string>({"Steps", "Sampler", "Schedule type", "CFG scale", "Seed",
                                      "Size", "Model hash", "Model", "VAE hash", "VAE",
                                      "Denoising strength", "Clip skip", "Eta DDIM", "CFG Rescale",
                                      "Batch size", "Batch pos", "Long prompt", "Version"}));
  // The --json view: every out key, txt2img without init image and strength.
  Settings txt2img;
  const json j = settings_json(txt2img);
  EXPECT_TRUE(j["init_image"].is_null());
  EXPECT_TRUE(j["strength"].is_null());
  EXPECT_EQ(j["scheduler"], "");
  EXPECT_EQ(j["sampler"], "ddim");
  EXPECT_EQ(settings_json(s)["strength"], 0.75);
}

}  // namespace
}  // namespace sdgen
