// Single-file checkpoint detection, config inference and conversion
// (include/sdgen/checkpoint.h), against full-size SD1.5 / SD2.1 tensor
// manifests (meta tensors, no memory) and the tiny model stored in both layouts.

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "sdgen/checkpoint.h"
#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/safetensors.h"
#include "sdgen/text_encoder.h"
#include "sdgen/weights.h"
#include "test_util.h"

namespace sdgen {
namespace {

using Shapes = std::map<std::string, std::vector<int64_t>>;

const nlohmann::json& manifests() {
  static const nlohmann::json j = read_json_file(test::shared_dir() + "/data/manifests.json");
  return j;
}

Shapes manifest_shapes(const std::string& name) {
  Shapes out;
  for (const auto& item : manifests().at(name).items())
    out[item.key()] = item.value().get<std::vector<int64_t>>();
  return out;
}

// Tensors with the manifest's shapes that own no memory.
TensorMap meta_tensors(const Shapes& shapes) {
  TensorMap out;
  for (const auto& kv : shapes)
    out[kv.first] = torch::empty(kv.second, torch::TensorOptions().device(torch::kMeta));
  return out;
}

Shapes shapes_of(const TensorMap& tensors) {
  Shapes out;
  for (const auto& kv : tensors) out[kv.first] = kv.second.sizes().vec();
  return out;
}

// Lists the differences (missing, unexpected, shape) so a failure names the keys.
std::string shape_diff(const Shapes& expected, const Shapes& found) {
  std::string out;
  int shown = 0;
  auto note = [&](const std::string& line) {
    if (shown++ < 20) out += "  " + line + "\n";
  };
  for (const auto& kv : expected) {
    auto it = found.find(kv.first);
    if (it == found.end())
      note("missing " + kv.first);
    else if (it->second != kv.second)
      note("shape " + kv.first + ": expected " + shape_string(kv.second) + ", found " +
           shape_string(it->second));
  }
  for (const auto& kv : found)
    if (!expected.count(kv.first)) note("unexpected " + kv.first);
  if (shown > 20) out += "  ... " + std::to_string(shown - 20) + " more\n";
  return out;
}

void expect_error_containing(const std::function<void()>& f,
                             const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "expected sdgen::Error";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const auto& part : parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "message '" << message << "' lacks '" << part << "'";
  }
}

void expect_sd15_configs(const UNetConfig& unet, const VAEConfig& vae, const CLIPTextConfig& clip) {
  EXPECT_EQ(unet.in_channels, 4);
  EXPECT_EQ(unet.out_channels, 4);
  EXPECT_EQ(unet.block_out_channels, (std::vector<int>{320, 640, 1280, 1280}));
  EXPECT_EQ(unet.layers_per_block, 2);
  EXPECT_EQ(unet.down_block_types,
            (std::vector<std::string>{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                      "CrossAttnDownBlock2D", "DownBlock2D"}));
  EXPECT_EQ(unet.up_block_types,
            (std::vector<std::string>{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                      "CrossAttnUpBlock2D"}));
  EXPECT_EQ(unet.mid_block_type, "UNetMidBlock2DCrossAttn");
  EXPECT_EQ(unet.attention_head_dim, (std::vector<int>{8, 8, 8, 8}));
  EXPECT_TRUE(unet.num_attention_heads.empty());
  for (size_t b = 0; b < 4; ++b) EXPECT_EQ(unet.heads(b), 8);
  EXPECT_EQ(unet.transformer_layers_per_block, (std::vector<int>{1, 1, 1, 1}));
  EXPECT_EQ(unet.cross_attention_dim, 768);
  EXPECT_FALSE(unet.use_linear_projection);
  EXPECT_FALSE(unet.upcast_attention);
  EXPECT_EQ(unet.sample_size, 64);

  EXPECT_EQ(vae.block_out_channels, (std::vector<int>{128, 256, 512, 512}));
  EXPECT_EQ(vae.layers_per_block, 2);
  EXPECT_EQ(vae.in_channels, 3);
  EXPECT_EQ(vae.out_channels, 3);
  EXPECT_EQ(vae.latent_channels, 4);
  EXPECT_TRUE(vae.use_quant_conv);
  EXPECT_TRUE(vae.use_post_quant_conv);
  EXPECT_TRUE(vae.mid_block_add_attention);

  EXPECT_EQ(clip.vocab_size, 49408);
  EXPECT_EQ(clip.hidden_size, 768);
  EXPECT_EQ(clip.intermediate_size, 3072);
  EXPECT_EQ(clip.num_hidden_layers, 12);
  EXPECT_EQ(clip.num_attention_heads, 12);
  EXPECT_EQ(clip.max_position_embeddings, 77);
  EXPECT_EQ(clip.hidden_act, "quick_gelu");
}

// ---- full-size manifests (meta tensors) -----------------------------------------

TEST(CheckpointManifest, SD15DetectInferConvert) {
  SDGEN_REQUIRE_SHARED();
  TensorMap all = meta_tensors(manifest_shapes("sd15.single"));
  // Keys real files carry that are not weights: ignored, not reported.
  auto meta = [](std::vector<int64_t> shape) {
    return torch::empty(shape, torch::TensorOptions().device(torch::kMeta));
  };
  all["alphas_cumprod"] = meta({1000});
  all["betas"] = meta({1000});
  all["model_ema.decay"] = meta({});
  all["model_ema.diffusion_modelinput_blocks00weight"] = meta({320, 4, 3, 3});
  all["first_stage_model.loss.logvar"] = meta({});
  all["cond_stage_model.transformer.text_model.embeddings.position_ids"] = meta({1, 77});

  ASSERT_EQ(detect_family(all), ModelFamily::SD1);
  const UNetConfig unet = infer_unet_config(all, ModelFamily::SD1);
  const VAEConfig vae = infer_vae_config(all);
  const CLIPTextConfig clip = infer_clip_config(all, ModelFamily::SD1);
  expect_sd15_configs(unet, vae, clip);

  const ConvertedWeights w = convert_single_file(all, ModelFamily::SD1, unet, vae, clip);
  const std::vector<std::pair<std::string, const TensorMap*>> parts = {
      {"unet", &w.unet}, {"vae", &w.vae}, {"text_encoder", &w.text_encoder}};
  for (const auto& part : parts) {
    const Shapes expected = manifest_shapes("sd15.diffusers." + part.first);
    const Shapes found = shapes_of(*part.second);
    EXPECT_EQ(found, expected) << part.first << ":\n" << shape_diff(expected, found);
  }
}

TEST(CheckpointManifest, SD21DetectInferConvertDropsLayer24) {
  SDGEN_REQUIRE_SHARED();
  Shapes shapes = manifest_shapes("sd21.single");
  // Real SD2 files carry the OpenCLIP tower's 24th layer, unused ("penultimate").
  const std::string layer22 = "cond_stage_model.model.transformer.resblocks.22.";
  int copied = 0;
  for (const auto& kv : Shapes(shapes)) {
    if (kv.first.compare(0, layer22.size(), layer22) != 0) continue;
    shapes["cond_stage_model.model.transformer.resblocks.23." + kv.first.substr(layer22.size())] =
        kv.second;
    ++copied;
  }
  ASSERT_EQ(copied, 12);
  shapes["cond_stage_model.model.text_projection"] = {1024, 1024};
  shapes["cond_stage_model.model.logit_scale"] = {};
  shapes["alphas_cumprod_prev"] = {1000};
  TensorMap all = meta_tensors(shapes);

  ASSERT_EQ(detect_family(all), ModelFamily::SD2);
  const UNetConfig unet = infer_unet_config(all, ModelFamily::SD2);
  EXPECT_EQ(unet.block_out_channels, (std::vector<int>{320, 640, 1280, 1280}));
  EXPECT_EQ(unet.layers_per_block, 2);
  EXPECT_EQ(unet.attention_head_dim, (std::vector<int>{5, 10, 20, 20}));
  for (size_t b = 0; b < 4; ++b) EXPECT_EQ(unet.heads(b) * 64, unet.block_out_channels[b]);
  EXPECT_EQ(unet.cross_attention_dim, 1024);
  EXPECT_TRUE(unet.use_linear_projection);
  EXPECT_TRUE(unet.upcast_attention);
  EXPECT_EQ(unet.down_block_types[0], "CrossAttnDownBlock2D");
  EXPECT_EQ(unet.down_block_types[3], "DownBlock2D");
  EXPECT_EQ(unet.up_block_types[0], "UpBlock2D");
  EXPECT_EQ(unet.up_block_types[3], "CrossAttnUpBlock2D");

  const VAEConfig vae = infer_vae_config(all);
  EXPECT_EQ(vae.block_out_channels, (std::vector<int>{128, 256, 512, 512}));
  EXPECT_EQ(vae.latent_channels, 4);

  const CLIPTextConfig clip = infer_clip_config(all, ModelFamily::SD2);
  EXPECT_EQ(clip.hidden_act, "gelu");
  EXPECT_EQ(clip.hidden_size, 1024);
  EXPECT_EQ(clip.num_attention_heads, 16);
  EXPECT_EQ(clip.num_hidden_layers, 23);
  EXPECT_EQ(clip.intermediate_size, 4096);
  EXPECT_EQ(clip.vocab_size, 49408);
  EXPECT_EQ(clip.max_position_embeddings, 77);

  const ConvertedWeights w = convert_single_file(all, ModelFamily::SD2, unet, vae, clip);
  const Shapes expected_unet = manifest_shapes("sd21.diffusers.unet");
  const Shapes expected_vae = manifest_shapes("sd21.diffusers.vae");
  const Shapes expected_text = manifest_shapes("sd21.diffusers.text_encoder");
  EXPECT_EQ(shapes_of(w.unet), expected_unet) << shape_diff(expected_unet, shapes_of(w.unet));
  EXPECT_EQ(shapes_of(w.vae), expected_vae) << shape_diff(expected_vae, shapes_of(w.vae));
  EXPECT_EQ(shapes_of(w.text_encoder), expected_text)
      << shape_diff(expected_text, shapes_of(w.text_encoder));

  // The manifest's 23-layer file (as diffusers re-exports it) gives the same config.
  EXPECT_EQ(infer_clip_config(meta_tensors(manifest_shapes("sd21.single")), ModelFamily::SD2)
                .num_hidden_layers,
            23);
}

// SDXL base 1.0's single file: the architecture stable-diffusion-xl-base-1.0's
// configs give, and every tensor renamed to the diffusers UNet's names.
TEST(CheckpointManifest, SDXLBaseConfigsAndNames) {
  SDGEN_REQUIRE_SHARED();
  const TensorMap all = meta_tensors(manifest_shapes("sdxl.single"));
  ASSERT_EQ(detect_family(all), ModelFamily::SDXL);
  const UNetConfig unet = infer_unet_config(all, ModelFamily::SDXL);
  EXPECT_EQ(unet.block_out_channels, (std::vector<int>{320, 640, 1280}));
  EXPECT_EQ(unet.down_block_types, (std::vector<std::string>{"DownBlock2D", "CrossAttnDownBlock2D",
                                                             "CrossAttnDownBlock2D"}));
  EXPECT_EQ(unet.up_block_types,
            (std::vector<std::string>{"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}));
  EXPECT_EQ(unet.transformer_layers_per_block, (std::vector<int>{1, 2, 10}));
  EXPECT_EQ(unet.attention_head_dim, (std::vector<int>{5, 10, 20}));
  EXPECT_EQ(unet.layers_per_block, 2);
  EXPECT_EQ(unet.cross_attention_dim, 2048);
  EXPECT_TRUE(unet.use_linear_projection);
  EXPECT_EQ(unet.addition_embed_type, "text_time");
  EXPECT_EQ(unet.addition_time_embed_dim, 256);
  EXPECT_EQ(unet.projection_class_embeddings_input_dim, 2816);
  EXPECT_EQ(unet.sample_size, 128);
  const VAEConfig vae = infer_vae_config(all, ModelFamily::SDXL);
  EXPECT_EQ(vae.scaling_factor, 0.13025);
  EXPECT_TRUE(vae.force_upcast);
  const CLIPTextConfig clip = infer_clip_config(all, ModelFamily::SDXL);
  EXPECT_EQ(clip.hidden_size, 768);
  EXPECT_EQ(clip.num_hidden_layers, 12);
  EXPECT_EQ(clip.hidden_act, "quick_gelu");
  const CLIPTextConfig clip2 = infer_clip2_config(all);
  EXPECT_EQ(clip2.hidden_size, 1280);
  EXPECT_EQ(clip2.num_hidden_layers, 32);  // all kept: the pooled output uses the last
  EXPECT_EQ(clip2.num_attention_heads, 20);
  EXPECT_EQ(clip2.intermediate_size, 5120);
  EXPECT_EQ(clip2.hidden_act, "gelu");
  EXPECT_TRUE(clip2.with_projection);
  EXPECT_EQ(clip2.projection_dim, 1280);

  const ConvertedWeights w = convert_single_file(all, ModelFamily::SDXL, unet, vae, clip, clip2);
  const Shapes expected_unet = manifest_shapes("sdxl.diffusers.unet");
  EXPECT_EQ(shapes_of(w.unet), expected_unet) << shape_diff(expected_unet, shapes_of(w.unet));
  EXPECT_EQ(w.vae.size(), manifest_shapes("sd15.diffusers.vae").size());
  // The encoders' names are the modules' own (checked on narrow copies of
  // the same depth: a full bigG would take 2.8 GB here).
  for (const auto& [config, weights] :
       {std::pair{clip, &w.text_encoder}, std::pair{clip2, &w.text_encoder_2}}) {
    CLIPTextConfig narrow = config;
    narrow.hidden_size = 64;
    narrow.intermediate_size = 64;
    narrow.num_attention_heads = 1;
    narrow.vocab_size = 8;
    narrow.projection_dim = 8;
    CLIPTextModel module(narrow);
    std::set<std::string> names, converted;
    for (const auto& p : module->named_parameters()) names.insert(p.key());
    for (const auto& kv : *weights) converted.insert(kv.first);
    EXPECT_EQ(converted, names);
  }
  EXPECT_EQ(w.text_encoder_2.at("text_projection.weight").sizes().vec(),
            (std::vector<int64_t>{1280, 1280}));
}

TEST(CheckpointManifest, ProjectionFormFollowsConfig) {
  SDGEN_REQUIRE_SHARED();
  const TensorMap sd15 = meta_tensors(manifest_shapes("sd15.single"));
  UNetConfig config = infer_unet_config(sd15, ModelFamily::SD1);
  const std::string key = "down_blocks.1.attentions.0.proj_in.weight";
  EXPECT_EQ(convert_ldm_unet(sd15, config).at(key).sizes().vec(),
            (std::vector<int64_t>{640, 640, 1, 1}));
  config.use_linear_projection = true;
  EXPECT_EQ(convert_ldm_unet(sd15, config).at(key).sizes().vec(), (std::vector<int64_t>{640, 640}));

  const TensorMap sd21 = meta_tensors(manifest_shapes("sd21.single"));
  config = infer_unet_config(sd21, ModelFamily::SD2);
  const std::string out_key = "mid_block.attentions.0.proj_out.weight";
  EXPECT_EQ(convert_ldm_unet(sd21, config).at(out_key).sizes().vec(),
            (std::vector<int64_t>{1280, 1280}));
  config.use_linear_projection = false;
  EXPECT_EQ(convert_ldm_unet(sd21, config).at(out_key).sizes().vec(),
            (std::vector<int64_t>{1280, 1280, 1, 1}));
}

TEST(CheckpointManifest, UnknownKeysArePassedOnNotDropped) {
  SDGEN_REQUIRE_SHARED();
  TensorMap all = meta_tensors(manifest_shapes("sd21.single"));
  auto meta = torch::empty({3}, torch::TensorOptions().device(torch::kMeta));
  all["model.diffusion_model.mystery.weight"] = meta;
  all["model.diffusion_model.input_blocks.1.0.mystery.weight"] = meta;
  all["first_stage_model.encoder.mystery"] = meta;
  all["cond_stage_model.model.mystery"] = meta;
  all["cond_stage_model.model.transformer.resblocks.0.mystery"] = meta;
  const ModelFamily family = detect_family(all);
  const ConvertedWeights w =
      convert_single_file(all, family, infer_unet_config(all, family), infer_vae_config(all),
                          infer_clip_config(all, family));
  // Unknown keys keep their original full name, so load_weights names them.
  EXPECT_EQ(w.unet.count("model.diffusion_model.mystery.weight"), 1u);
  EXPECT_EQ(w.unet.count("model.diffusion_model.input_blocks.1.0.mystery.weight"), 1u);
  EXPECT_EQ(w.unet.size(), manifest_shapes("sd21.diffusers.unet").size() + 2);
  EXPECT_EQ(w.vae.count("first_stage_model.encoder.mystery"), 1u);
  EXPECT_EQ(w.vae.size(), manifest_shapes("sd21.diffusers.vae").size() + 1);
  EXPECT_EQ(w.text_encoder.count("cond_stage_model.model.mystery"), 1u);
  EXPECT_EQ(w.text_encoder.count("cond_stage_model.model.transformer.resblocks.0.mystery"), 1u);
  EXPECT_EQ(w.text_encoder.size(), manifest_shapes("sd21.diffusers.text_encoder").size() + 2);
}

TEST(CheckpointManifest, FamilyFromCrossAttentionWithoutTextEncoder) {
  SDGEN_REQUIRE_SHARED();
  for (const auto& name : {std::string("sd15.single"), std::string("sd21.single")}) {
    TensorMap all = meta_tensors(manifest_shapes(name));
    for (auto it = all.begin(); it != all.end();)
      it = it->first.rfind("cond_stage_model.", 0) == 0 ? all.erase(it) : std::next(it);
    EXPECT_EQ(detect_family(all), name == "sd15.single" ? ModelFamily::SD1 : ModelFamily::SD2);
    expect_error_containing([&] { infer_clip_config(all, detect_family(all)); },
                            {"not found", "cond_stage_model."});
  }
}

// ---- detection errors ----------------------------------------------------------

TEST(CheckpointDetect, RejectsWhatIsNotAnSD1OrSD2SingleFile) {
  expect_error_containing([] { detect_family(TensorMap{}); }, {"no tensors"});

  auto t = torch::zeros({1});
  expect_error_containing(
      [&] {
        detect_family({{"cond_stage_model.transformer.text_model.final_layer_norm.weight", t}});
      },
      {"only text-encoder", "model.diffusion_model"});
  expect_error_containing(
      [&] {
        detect_family({{"text_model.final_layer_norm.weight", t}});
      },
      {"only text-encoder"});
  expect_error_containing(
      [&] {
        detect_family({{"first_stage_model.encoder.conv_in.weight", t}});
      },
      {"only VAE"});
  expect_error_containing(
      [&] {
        detect_family({{"decoder.up_blocks.0.resnets.0.conv1.weight", t}});
      },
      {"only VAE"});
  expect_error_containing(
      [&] {
        detect_family({{"down_blocks.0.resnets.0.conv1.weight", t}});
      },
      {"diffusers"});
  expect_error_containing(
      [&] {
        detect_family(
            {{"model.diffusion_model.input_blocks.0.0.weight", t},
             {"model.diffusion_model.label_emb.0.0.weight", t},
             {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight", t}});
      },
      {"SDXL"});
  expect_error_containing(
      [&] {
        detect_family({{"model.diffusion_model.joint_blocks.0.x.weight", t}});
      },
      {"input_blocks.0.0.weight"});
}

TEST(CheckpointDetect, TextEncoderOnlyFileThrows) {
  SDGEN_REQUIRE_SHARED();
  const SafeTensorsFile folder_text(test::tiny_model_dir() + "/text_encoder/model.safetensors");
  expect_error_containing([&] { detect_family(tensors_with_prefix(folder_text, "")); },
                          {"not a Stable Diffusion", "only text-encoder"});
  const SafeTensorsFile single(test::tiny_model_file());
  expect_error_containing([&] { detect_family(tensors_with_prefix(single, "cond_stage_model.")); },
                          {"only text-encoder"});
}

// ---- the tiny model in both layouts ----------------------------------------------

void expect_bit_equal(const TensorMap& expected, const TensorMap& found, const std::string& what) {
  std::vector<std::string> missing, extra;
  for (const auto& kv : expected)
    if (!found.count(kv.first)) missing.push_back(kv.first);
  for (const auto& kv : found)
    if (!expected.count(kv.first)) extra.push_back(kv.first);
  EXPECT_TRUE(missing.empty()) << what << ": " << missing.size() << " missing, first "
                               << (missing.empty() ? "" : missing[0]);
  EXPECT_TRUE(extra.empty()) << what << ": " << extra.size() << " unexpected, first "
                             << (extra.empty() ? "" : extra[0]);
  int unequal = 0;
  for (const auto& kv : expected) {
    auto it = found.find(kv.first);
    if (it == found.end()) continue;
    const bool same = it->second.scalar_type() == kv.second.scalar_type() &&
                      it->second.sizes() == kv.second.sizes() &&
                      torch::equal(it->second, kv.second);
    if (!same && unequal++ < 5)
      ADD_FAILURE() << what << ": '" << kv.first << "' differs: expected "
                    << shape_string(kv.second.sizes()) << ", found "
                    << shape_string(it->second.sizes()) << ", max |diff| "
                    << (it->second.sizes() == kv.second.sizes()
                            ? test::max_abs_diff(it->second, kv.second)
                            : -1.0);
  }
  EXPECT_EQ(unequal, 0) << what;
}

TEST(CheckpointTiny, ConvertedEqualsDiffusersFolderBitForBit) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = test::tiny_model_dir();
  const SafeTensorsFile single(test::tiny_model_file());
  const TensorMap all = tensors_with_prefix(single, "");
  ASSERT_EQ(detect_family(all), ModelFamily::SD1);

  const UNetConfig unet_config = UNetConfig::from_json(read_json_file(dir + "/unet/config.json"));
  const VAEConfig vae_config = VAEConfig::from_json(read_json_file(dir + "/vae/config.json"));
  const CLIPTextConfig clip_config =
      CLIPTextConfig::from_json(read_json_file(dir + "/text_encoder/config.json"));
  const ConvertedWeights w =
      convert_single_file(all, ModelFamily::SD1, unet_config, vae_config, clip_config);

  const SafeTensorsFile unet_file(dir + "/unet/diffusion_pytorch_model.safetensors");
  const SafeTensorsFile vae_file(dir + "/vae/diffusion_pytorch_model.safetensors");
  const SafeTensorsFile text_file(dir + "/text_encoder/model.safetensors");
  expect_bit_equal(tensors_with_prefix(unet_file, ""), w.unet, "unet");
  expect_bit_equal(tensors_with_prefix(vae_file, ""), w.vae, "vae");
  expect_bit_equal(tensors_with_prefix(text_file, "text_model."), w.text_encoder, "text_encoder");

  // Zero copy: every converted tensor still points into the mapped file.
  uintptr_t lo = UINTPTR_MAX, hi = 0;
  for (const auto& kv : all) {
    const auto p = reinterpret_cast<uintptr_t>(kv.second.data_ptr());
    lo = std::min(lo, p);
    hi = std::max(hi, p + kv.second.nbytes());
  }
  for (const TensorMap* part : {&w.unet, &w.vae, &w.text_encoder})
    for (const auto& kv : *part) {
      const auto p = reinterpret_cast<uintptr_t>(kv.second.data_ptr());
      EXPECT_TRUE(p >= lo && p + kv.second.nbytes() <= hi) << kv.first << " was copied";
    }
}

TEST(CheckpointTiny, InferredStructureMatchesConfigJson) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = test::tiny_model_dir();
  const TensorMap all = tensors_with_prefix(SafeTensorsFile(test::tiny_model_file()), "");
  const UNetConfig want = UNetConfig::from_json(read_json_file(dir + "/unet/config.json"));
  const UNetConfig got = infer_unet_config(all, ModelFamily::SD1);
  EXPECT_EQ(got.in_channels, want.in_channels);
  EXPECT_EQ(got.out_channels, want.out_channels);
  EXPECT_EQ(got.block_out_channels, want.block_out_channels);
  EXPECT_EQ(got.layers_per_block, want.layers_per_block);
  EXPECT_EQ(got.down_block_types, want.down_block_types);
  EXPECT_EQ(got.up_block_types, want.up_block_types);
  EXPECT_EQ(got.cross_attention_dim, want.cross_attention_dim);
  EXPECT_EQ(got.use_linear_projection, want.use_linear_projection);
  EXPECT_EQ(got.transformer_layers_per_block, want.transformer_layers_per_block);

  const VAEConfig want_vae = VAEConfig::from_json(read_json_file(dir + "/vae/config.json"));
  const VAEConfig got_vae = infer_vae_config(all);
  EXPECT_EQ(got_vae.block_out_channels, want_vae.block_out_channels);
  EXPECT_EQ(got_vae.layers_per_block, want_vae.layers_per_block);
  EXPECT_EQ(got_vae.latent_channels, want_vae.latent_channels);
  EXPECT_EQ(got_vae.in_channels, want_vae.in_channels);
  EXPECT_EQ(got_vae.out_channels, want_vae.out_channels);

  // 32 wide, 4 heads: not a standard 64-per-head text tower, so it needs the config.json.
  expect_error_containing([&] { infer_clip_config(all, ModelFamily::SD1); },
                          {"multiple of 64", "config.json"});
}

}  // namespace
}  // namespace sdgen
