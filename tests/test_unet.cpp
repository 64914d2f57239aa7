// UNet2DConditionModel against diffusers golden outputs (tiny SD1 model) and
// full-size SD1.5 / SD2.1 parameter names and shapes from data/manifests.json.

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/random_model.h"
#include "sdgen/safetensors.h"
#include "sdgen/unet.h"
#include "sdgen/weights.h"
#include "test_util.h"

namespace {

using sdgen::test::golden;
using sdgen::test::max_abs_diff;

constexpr double kTolerance = 1e-4;

sdgen::UNetConfig tiny_config() {
  return sdgen::UNetConfig::from_json(
      sdgen::read_json_file(sdgen::test::tiny_model_dir() + "/unet/config.json"));
}

sdgen::UNet2DConditionModel load_tiny_unet(const sdgen::UNetConfig& config) {
  sdgen::UNet2DConditionModel unet(config);
  sdgen::SafeTensorsFile file(sdgen::test::tiny_model_dir() +
                              "/unet/diffusion_pytorch_model.safetensors");
  sdgen::load_weights(*unet, sdgen::tensors_with_prefix(file, ""), "unet");
  unet->eval();
  return unet;
}

using ShapeMap = std::map<std::string, std::vector<int64_t>>;

ShapeMap parameter_shapes(const torch::nn::Module& module) {
  ShapeMap shapes;
  for (const auto& p : module.named_parameters()) {
    shapes[p.key()] = p.value().sizes().vec();
  }
  return shapes;
}

ShapeMap manifest_shapes(const std::string& key) {
  auto manifests = sdgen::read_json_file(sdgen::test::shared_dir() + "/data/manifests.json");
  ShapeMap shapes;
  for (const auto& [name, shape] : manifests.at(key).items()) {
    shapes[name] = shape.get<std::vector<int64_t>>();
  }
  return shapes;
}

// "" when equal; otherwise the first differences, named.
std::string diff_shapes(const ShapeMap& expected, const ShapeMap& found) {
  std::ostringstream out;
  int reported = 0;
  for (const auto& [name, shape] : expected) {
    auto it = found.find(name);
    if (it == found.end()) {
      if (reported++ < 20) out << "missing " << name << "\n";
    } else if (it->second != shape) {
      if (reported++ < 20)
        out << "shape " << name << ": expected " << sdgen::shape_string(shape) << ", found "
            << sdgen::shape_string(it->second) << "\n";
    }
  }
  for (const auto& [name, shape] : found) {
    if (!expected.count(name) && reported++ < 20) out << "unexpected " << name << "\n";
  }
  if (reported > 20) out << "... " << reported - 20 << " more\n";
  return out.str();
}

TEST(UNet, MatchesDiffusersGolden) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto unet = load_tiny_unet(tiny_config());
  auto out = unet->forward(golden("unet.in.x"), golden("unet.in.t"), golden("unet.in.ctx"));
  const double err = max_abs_diff(out, golden("unet.out"));
  std::cout << "unet.out max abs error " << err << "\n";
  EXPECT_LT(err, kTolerance);
}

TEST(UNet, NonSquareLatentWithScalarTimestep) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto unet = load_tiny_unet(tiny_config());
  auto ctx = golden("unet.in.ctx").slice(0, 0, 1);
  auto out = unet->forward(golden("unet.in.x_wide"), torch::tensor(1, torch::kLong), ctx);
  const double err = max_abs_diff(out, golden("unet.out_wide"));
  std::cout << "unet.out_wide max abs error " << err << "\n";
  EXPECT_LT(err, kTolerance);
}

TEST(UNet, BatchRowsAreIndependent) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto unet = load_tiny_unet(tiny_config());
  auto x = golden("unet.in.x"), t = golden("unet.in.t"), ctx = golden("unet.in.ctx");
  auto expected = golden("unet.out");
  for (int64_t i = 0; i < 2; ++i) {
    auto out = unet->forward(x.slice(0, i, i + 1), t.slice(0, i, i + 1), ctx.slice(0, i, i + 1));
    EXPECT_LT(max_abs_diff(out, expected.slice(0, i, i + 1)), kTolerance) << "row " << i;
  }
}

TEST(UNet, OddLatentSizeRoundTrips) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto unet = load_tiny_unet(tiny_config());
  EXPECT_EQ(unet->downsample_factor(), 2);
  auto x = torch::randn({1, 4, 7, 9});
  auto out = unet->forward(x, torch::tensor({500}), golden("unet.in.ctx").slice(0, 0, 1));
  EXPECT_EQ(out.sizes(), x.sizes());
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
}

TEST(UNet, UpcastAttentionPathMatchesGolden) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto config = tiny_config();
  config.upcast_attention = true;
  auto unet = load_tiny_unet(config);
  // In float64 the upcast branch runs attention in float32; the rest stays float64.
  unet->to(torch::kDouble);
  auto out = unet->forward(golden("unet.in.x").to(torch::kDouble), golden("unet.in.t"),
                           golden("unet.in.ctx").to(torch::kDouble));
  EXPECT_EQ(out.scalar_type(), torch::kDouble);
  EXPECT_LT(max_abs_diff(out, golden("unet.out")), kTolerance);
}

TEST(UNet, RejectsBadInputs) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto unet = load_tiny_unet(tiny_config());
  auto ctx = golden("unet.in.ctx");
  EXPECT_THROW(unet->forward(torch::zeros({2, 3, 8, 8}), torch::tensor({1, 2}), ctx), sdgen::Error);
  EXPECT_THROW(
      unet->forward(torch::zeros({2, 4, 8, 8}), torch::tensor({1, 2}), torch::zeros({2, 77, 16})),
      sdgen::Error);
  EXPECT_THROW(unet->forward(torch::zeros({2, 4, 8, 8}), torch::tensor({1, 2, 3}), ctx),
               sdgen::Error);
}

TEST(UNet, RejectsUnsupportedConfig) {
  auto config = sdgen::UNetConfig{};
  config.block_out_channels = {32, 64};
  config.down_block_types = {"CrossAttnDownBlock2D", "DownBlock2D"};
  config.up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D"};
  config.attention_head_dim = {4, 4};
  config.cross_attention_dim = 32;
  auto bad = config;
  bad.down_block_types[1] = "SimpleCrossAttnDownBlock2D";
  EXPECT_THROW(sdgen::UNet2DConditionModel{bad}, sdgen::Error);
  bad = config;
  bad.attention_head_dim = {5, 5};
  EXPECT_THROW(sdgen::UNet2DConditionModel{bad}, sdgen::Error);
  bad = config;
  bad.transformer_layers_per_block = {1, 1, 1};
  EXPECT_THROW(sdgen::UNet2DConditionModel{bad}, sdgen::Error);
}

TEST(UNet, TransformerLayersPerBlock) {
  auto config = sdgen::UNetConfig{};
  config.block_out_channels = {32, 64};
  config.down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D"};
  config.up_block_types = {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  config.attention_head_dim = {2, 4};
  config.cross_attention_dim = 16;
  config.use_linear_projection = true;
  config.transformer_layers_per_block = {1, 3};
  sdgen::UNet2DConditionModel unet(config);
  sdgen::randomize_parameters(*unet);
  auto shapes = parameter_shapes(*unet);
  const std::string tb = ".transformer_blocks.";
  EXPECT_TRUE(shapes.count("down_blocks.0.attentions.1" + tb + "0.norm1.weight"));
  EXPECT_FALSE(shapes.count("down_blocks.0.attentions.1" + tb + "1.norm1.weight"));
  EXPECT_TRUE(shapes.count("down_blocks.1.attentions.1" + tb + "2.norm1.weight"));
  EXPECT_TRUE(shapes.count("mid_block.attentions.0" + tb + "2.norm1.weight"));    // last block's
  EXPECT_TRUE(shapes.count("up_blocks.0.attentions.2" + tb + "2.norm1.weight"));  // mirrored
  EXPECT_FALSE(shapes.count("up_blocks.1.attentions.2" + tb + "1.norm1.weight"));
  EXPECT_EQ(shapes["down_blocks.1.attentions.0.proj_in.weight"], (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(shapes["up_blocks.0.attentions.0" + tb + "0.attn2.to_k.weight"],
            (std::vector<int64_t>{64, 16}));

  torch::NoGradGuard no_grad;
  unet->eval();
  auto out =
      unet->forward(torch::randn({2, 4, 8, 6}), torch::tensor({10, 900}), torch::randn({2, 5, 16}));
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 4, 8, 6}));
}

TEST(UNet, FullSizeSD15ParameterNamesAndShapes) {
  SDGEN_REQUIRE_SHARED();
  sdgen::UNetConfig config;  // defaults are SD1.5
  config.cross_attention_dim = 768;
  config.block_out_channels = {320, 640, 1280, 1280};
  config.attention_head_dim = {8, 8, 8, 8};
  config.use_linear_projection = false;
  sdgen::UNet2DConditionModel unet(config);
  const auto found = parameter_shapes(*unet);
  const auto expected = manifest_shapes("sd15.diffusers.unet");
  EXPECT_EQ(found.size(), expected.size());
  EXPECT_EQ(diff_shapes(expected, found), "");
  int64_t count = 0;
  for (const auto& p : unet->parameters()) count += p.numel();
  auto manifests = sdgen::read_json_file(sdgen::test::shared_dir() + "/data/manifests.json");
  EXPECT_EQ(count, manifests.at("sd15.params").at("unet").get<int64_t>());
}

TEST(UNet, FullSizeSD21ParameterNamesAndShapes) {
  SDGEN_REQUIRE_SHARED();
  auto config =
      sdgen::UNetConfig::from_json(nlohmann::json{{"attention_head_dim", {5, 10, 20, 20}},
                                                  {"block_out_channels", {320, 640, 1280, 1280}},
                                                  {"cross_attention_dim", 1024},
                                                  {"use_linear_projection", true},
                                                  {"upcast_attention", true}});
  EXPECT_EQ(config.heads(0), 5);
  EXPECT_EQ(config.heads(3), 20);
  sdgen::UNet2DConditionModel unet(config);
  const auto found = parameter_shapes(*unet);
  const auto expected = manifest_shapes("sd21.diffusers.unet");
  EXPECT_EQ(found.size(), expected.size());
  EXPECT_EQ(diff_shapes(expected, found), "");
}

}  // namespace
