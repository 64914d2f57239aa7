// --vae: a separate VAE in each form users have (a VAE's LDM keys, a whole
// checkpoint's first_stage_model.*, diffusers keys, a diffusers vae/ folder)
// gives the image of the VAE it holds; A1111's "VAE hash" / "VAE" fields are
// written and read back by --from-png; bad VAE files are one clear error.

#include <filesystem>
#include <fstream>

#include "sdgen/a1111.h"
#include "sdgen/image_io.h"
#include "sdgen/safetensors.h"
#include "sdgen/sha256.h"
#include "sdgen/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

std::string q(const std::string& s) { return "'" + s + "'"; }

std::string sdgen_cmd() {
  return test::binary_dir() + "/sdgen --model " + q(test::tiny_model_dir()) +
         " -p 'a red fox in the snow' --steps 3 --seed 7 -W 64 -H 64 --threads 1 --dtype fp32 -q";
}

// The tiny single file's VAE tensors under `prefix`, each scaled by `scale`
// (1: the model's own VAE).
void write_vae(const std::string& path, const std::string& prefix, double scale = 1.0) {
  const SafeTensorsFile file(test::tiny_model_file());
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& [key, t] : tensors_with_prefix(file, "first_stage_model.")) {
    torch::Tensor v = t.clone();
    if (key == "decoder.conv_out.weight") v = v * scale;
    out.emplace_back(prefix + key, v);
  }
  write_safetensors(path, out);
}

std::string parameters_of(const std::string& png) {
  for (const auto& [k, v] : read_png(png).text)
    if (k == "parameters") return v;
  return "";
}

TEST(VAEFile, EveryLayoutGivesTheSameImageAsTheModelsOwnVAE) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("vae");
  std::string log;
  ASSERT_EQ(test::run(sdgen_cmd() + " -o " + q(dir + "/base.png"), &log), 0) << log;
  const auto base = read_png(dir + "/base.png").pixels;
  EXPECT_EQ(parameters_of(dir + "/base.png").find("VAE"), std::string::npos);

  write_vae(dir + "/ldm-vae.safetensors", "");
  write_vae(dir + "/ckpt-vae.safetensors", "first_stage_model.");
  const std::vector<std::string> vaes = {
      dir + "/ldm-vae.safetensors", dir + "/ckpt-vae.safetensors", test::tiny_model_dir() + "/vae",
      test::tiny_model_dir() + "/vae/diffusion_pytorch_model.safetensors"};
  for (size_t i = 0; i < vaes.size(); ++i) {
    const std::string out = dir + "/v" + std::to_string(i) + ".png";
    ASSERT_EQ(test::run(sdgen_cmd() + " --vae " + q(vaes[i]) + " -o " + q(out), &log), 0)
        << vaes[i] << "\n"
        << log;
    EXPECT_TRUE(torch::equal(read_png(out).pixels, base)) << vaes[i];
    const std::string params = parameters_of(out);
    const std::string weights =
        fs::is_directory(vaes[i]) ? vaes[i] + "/diffusion_pytorch_model.safetensors" : vaes[i];
    fs::path name = fs::path(vaes[i]).filename();
    EXPECT_NE(params.find("VAE hash: " + sha256_file_hex(weights).substr(0, 10) +
                          ", VAE: " + name.string()),
              std::string::npos)
        << params;
  }
}

TEST(VAEFile, ADifferentVAEChangesTheImageAndFromPngReadsItBack) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("vae");
  write_vae(dir + "/dark.safetensors", "", 0.5);
  std::string log;
  ASSERT_EQ(test::run(sdgen_cmd() + " -o " + q(dir + "/base.png"), &log), 0) << log;
  ASSERT_EQ(test::run(sdgen_cmd() + " --vae " + q(dir + "/dark.safetensors") + " -o " +
                          q(dir + "/dark.png"),
                      &log),
            0)
      << log;
  const auto base = read_png(dir + "/base.png").pixels;
  const auto dark = read_png(dir + "/dark.png").pixels;
  EXPECT_FALSE(torch::equal(base, dark));

  // --from-png with the same --vae: the same PNG, byte for byte.
  const std::string again = test::binary_dir() + "/sdgen --model " + q(test::tiny_model_dir()) +
                            " --threads 1 --dtype fp32 --from-png " + q(dir + "/dark.png");
  ASSERT_EQ(test::run(again + " -q --vae " + q(dir + "/dark.safetensors") + " -o " +
                          q(dir + "/again.png"),
                      &log),
            0)
      << log;
  std::ifstream a(dir + "/dark.png", std::ios::binary), b(dir + "/again.png", std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(a), {}),
            std::string(std::istreambuf_iterator<char>(b), {}));
  // Without it, sdgen says which VAE the PNG was made with.
  ASSERT_EQ(test::run(again + " -o " + q(dir + "/without.png"), &log), 0) << log;
  EXPECT_NE(log.find("was made with VAE dark.safetensors; pass --vae FILE"), std::string::npos)
      << log;
  EXPECT_TRUE(torch::equal(read_png(dir + "/without.png").pixels, base));
  // With another VAE, it says they differ.
  write_vae(dir + "/other.safetensors", "", 0.25);
  ASSERT_EQ(
      test::run(again + " --vae " + q(dir + "/other.safetensors") + " -o " + q(dir + "/other.png"),
                &log),
      0)
      << log;
  EXPECT_NE(log.find("the image will differ"), std::string::npos) << log;
}

TEST(VAEFile, BadVAEFilesAreOneClearError) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("vae");
  { std::ofstream(dir + "/vae.pt") << "PK\x03\x04 pickle"; }
  write_safetensors(dir + "/notvae.safetensors", {{"foo.weight", torch::zeros({2, 2})}});
  const std::vector<std::pair<std::string, std::string>> cases = {
      {dir + "/missing.safetensors", "--vae file not found"},
      {dir + "/vae.pt", "pickled VAE files are not loaded"},
      {dir + "/notvae.safetensors", "not a VAE"},
      {dir, "--vae folder without diffusion_pytorch_model.safetensors"},
  };
  for (const auto& [path, words] : cases) {
    std::string log;
    EXPECT_EQ(test::run(sdgen_cmd() + " --vae " + q(path) + " -o " + q(dir + "/x.png"), &log), 3)
        << path << "\n"
        << log;
    EXPECT_NE(log.find(words), std::string::npos) << path << "\n" << log;
    EXPECT_NE(log.find("sdgen: error: "), std::string::npos) << log;
    EXPECT_FALSE(fs::exists(dir + "/x.png"));
  }
}

}  // namespace
}  // namespace sdgen
