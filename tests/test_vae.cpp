// AutoencoderKL against diffusers golden outputs (tiny SD1 VAE) and the
// full-size SD VAE parameter names and shapes from data/manifests.json.

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/random_model.h"
#include "sdgen/safetensors.h"
#include "sdgen/vae.h"
#include "sdgen/weights.h"
#include "test_util.h"

namespace {

using sdgen::test::golden;
using sdgen::test::max_abs_diff;

constexpr double kTolerance = 1e-4;

sdgen::VAEConfig tiny_config() {
  return sdgen::VAEConfig::from_json(
      sdgen::read_json_file(sdgen::test::tiny_model_dir() + "/vae/config.json"));
}

sdgen::AutoencoderKL load_tiny_vae() {
  sdgen::AutoencoderKL vae(tiny_config());
  sdgen::SafeTensorsFile file(sdgen::test::tiny_model_dir() +
                              "/vae/diffusion_pytorch_model.safetensors");
  sdgen::load_weights(*vae, sdgen::tensors_with_prefix(file, ""), "vae");
  vae->eval();
  return vae;
}

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

ShapeMap parameter_shapes(const torch::nn::Module& module) {
  ShapeMap shapes;
  for (const auto& p : module.named_parameters()) shapes[p.key()] = p.value().sizes().vec();
  return shapes;
}

std::string diff_shapes(const ShapeMap& expected, const ShapeMap& found) {
  std::ostringstream out;
  for (const auto& [name, shape] : expected) {
    auto it = found.find(name);
    if (it == found.end()) {
      out << "missing " << name << "\n";
    } else if (it->second != shape) {
      out << "shape " << name << ": expected " << sdgen::shape_string(shape) << ", found "
          << sdgen::shape_string(it->second) << "\n";
    }
  }
  for (const auto& [name, shape] : found) {
    if (!expected.count(name)) out << "unexpected " << name << "\n";
  }
  return out.str();
}

TEST(VAE, DecodeMatchesDiffusersGolden) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto vae = load_tiny_vae();
  EXPECT_EQ(vae->downsample_factor(), 8);
  auto image = vae->decode(golden("vae.in.z"));
  const double err = max_abs_diff(image, golden("vae.out.image"));
  std::cout << "vae.out.image max abs error " << err << "\n";
  EXPECT_LT(err, kTolerance);
}

TEST(VAE, EncodeMatchesDiffusersGolden) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto vae = load_tiny_vae();
  auto posterior = vae->encode(golden("vae.enc.in.image"));
  const double mean_err = max_abs_diff(posterior.mean, golden("vae.enc.mean"));
  const double std_err = max_abs_diff(posterior.std, golden("vae.enc.std"));
  std::cout << "vae.enc.mean max abs error " << mean_err << ", vae.enc.std " << std_err << "\n";
  EXPECT_LT(mean_err, kTolerance);
  EXPECT_LT(std_err, kTolerance);
  EXPECT_LT(max_abs_diff(posterior.logvar.mul(0.5).exp(), posterior.std), 1e-6);
  EXPECT_LE(posterior.logvar.max().item<double>(), 20.0);
  EXPECT_GE(posterior.logvar.min().item<double>(), -30.0);
}

TEST(VAE, NonSquareRoundTripShapes) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto vae = load_tiny_vae();
  auto image = vae->decode(torch::randn({2, 4, 8, 12}));
  EXPECT_EQ(image.sizes(), (std::vector<int64_t>{2, 3, 64, 96}));
  auto posterior = vae->encode(image.clamp(-1, 1));
  EXPECT_EQ(posterior.mean.sizes(), (std::vector<int64_t>{2, 4, 8, 12}));
  EXPECT_EQ(posterior.std.sizes(), (std::vector<int64_t>{2, 4, 8, 12}));
}

TEST(VAE, RejectsBadInputs) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto vae = load_tiny_vae();
  EXPECT_THROW(vae->decode(torch::zeros({1, 3, 8, 8})), sdgen::Error);
  EXPECT_THROW(vae->encode(torch::zeros({1, 4, 64, 64})), sdgen::Error);
  auto config = tiny_config();
  config.act_fn = "gelu";
  EXPECT_THROW(sdgen::AutoencoderKL{config}, sdgen::Error);
}

TEST(VAE, OptionalPartsFollowConfig) {
  sdgen::VAEConfig config;
  config.block_out_channels = {32, 64};
  config.layers_per_block = 1;
  config.mid_block_add_attention = false;
  config.use_quant_conv = false;
  config.use_post_quant_conv = false;
  sdgen::AutoencoderKL vae(config);
  sdgen::randomize_parameters(*vae);
  auto shapes = parameter_shapes(*vae);
  for (const auto& [name, shape] : shapes) {
    EXPECT_EQ(name.find("attentions"), std::string::npos) << name;
    EXPECT_EQ(name.find("quant_conv"), std::string::npos) << name;
  }
  EXPECT_EQ(vae->downsample_factor(), 2);
  torch::NoGradGuard no_grad;
  auto image = vae->decode(torch::randn({1, 4, 5, 3}));
  EXPECT_EQ(image.sizes(), (std::vector<int64_t>{1, 3, 10, 6}));
}

TEST(VAE, FullSizeParameterNamesAndShapes) {
  SDGEN_REQUIRE_SHARED();
  sdgen::VAEConfig config;
  config.block_out_channels = {128, 256, 512, 512};
  config.layers_per_block = 2;
  sdgen::AutoencoderKL vae(config);
  const auto found = parameter_shapes(*vae);
  auto manifests = sdgen::read_json_file(sdgen::test::shared_dir() + "/data/manifests.json");
  for (const char* key : {"sd15.diffusers.vae", "sd21.diffusers.vae"}) {
    ShapeMap expected;
    for (const auto& [name, shape] : manifests.at(key).items())
      expected[name] = shape.get<std::vector<int64_t>>();
    EXPECT_EQ(found.size(), expected.size()) << key;
    EXPECT_EQ(diff_shapes(expected, found), "") << key;
  }
  int64_t count = 0;
  for (const auto& p : vae->parameters()) count += p.numel();
  EXPECT_EQ(count, manifests.at("sd15.params").at("vae").get<int64_t>());
}

}  // namespace

TEST(VAE, TiledDecodeFollowsDiffusersTiling) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto vae = load_tiny_vae();
  torch::manual_seed(3);
  const auto z = torch::randn({1, 4, 8, 8});
  // One tile covers it: the plain decode.
  EXPECT_TRUE(torch::equal(vae->tiled_decode(z, 8), vae->decode(z)));
  // 4-latent tiles every 3 latents (overlap 1/4), 32-pixel tiles blended over
  // 8 pixels and cropped to 24: the first tile's crop is untouched.
  const auto tiled = vae->tiled_decode(z, 4, 0.25);
  ASSERT_EQ(tiled.sizes(), (std::vector<int64_t>{1, 3, 64, 64}));
  EXPECT_TRUE(torch::isfinite(tiled).all().item<bool>());
  const auto first = vae->decode(z.narrow(2, 0, 4).narrow(3, 0, 4));
  EXPECT_TRUE(torch::allclose(tiled.narrow(2, 0, 24).narrow(3, 0, 24),
                              first.narrow(2, 0, 24).narrow(3, 0, 24)));
  // Non-square and not a multiple of the tile stride.
  const auto wide = vae->tiled_decode(torch::randn({1, 4, 5, 11}), 4, 0.25);
  EXPECT_EQ(wide.sizes(), (std::vector<int64_t>{1, 3, 40, 88}));
}
