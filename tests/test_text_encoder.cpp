#include <set>
#include <string>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/random_model.h"
#include "sdgen/safetensors.h"
#include "sdgen/text_encoder.h"
#include "sdgen/weights.h"
#include "test_util.h"

using sdgen::CLIPTextConfig;
using sdgen::CLIPTextModel;

namespace {

constexpr double kTolerance = 1e-4;  // fp32 CPU against transformers' fp32 CPU

CLIPTextModel load_tiny_text_encoder() {
  const std::string dir = sdgen::test::tiny_model_dir() + "/text_encoder";
  auto config = CLIPTextConfig::from_json(sdgen::read_json_file(dir + "/config.json"));
  CLIPTextModel model(config);
  sdgen::SafeTensorsFile file(dir + "/model.safetensors");
  sdgen::load_weights(*model, sdgen::tensors_with_prefix(file, "text_model."), "text_encoder");
  model->eval();
  return model;
}

}  // namespace

TEST(TextEncoder, ParameterNamesEqualCheckpointKeys) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = sdgen::test::tiny_model_dir() + "/text_encoder";
  auto config = CLIPTextConfig::from_json(sdgen::read_json_file(dir + "/config.json"));
  CLIPTextModel model(config);
  std::set<std::string> params;
  for (const auto& p : model->named_parameters()) params.insert(p.key());
  std::set<std::string> keys;
  sdgen::SafeTensorsFile file(dir + "/model.safetensors");
  for (const auto& kv : sdgen::tensors_with_prefix(file, "text_model.")) keys.insert(kv.first);
  EXPECT_EQ(params, keys);
  EXPECT_TRUE(params.count("encoder.layers.2.self_attn.out_proj.bias"));
  EXPECT_TRUE(params.count("embeddings.position_embedding.weight"));
  EXPECT_EQ(model->named_buffers().size(), 0u);
}

TEST(TextEncoder, MatchesGoldenOutputs) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto model = load_tiny_text_encoder();
  double max_last = 0, max_penult = 0, max_pooled = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string k = "text." + std::to_string(i);
    const torch::Tensor ids = sdgen::test::golden("tokens." + std::to_string(i));
    const auto out = model->forward(ids, 1);
    const auto skip2 = model->forward(ids, 2);
    const double d_last = sdgen::test::max_abs_diff(out.hidden, sdgen::test::golden(k + ".last"));
    const double d_penult =
        sdgen::test::max_abs_diff(skip2.hidden, sdgen::test::golden(k + ".penult_ln"));
    const double d_pooled =
        sdgen::test::max_abs_diff(out.pooled, sdgen::test::golden(k + ".pooled"));
    EXPECT_LT(d_last, kTolerance) << k << ".last";
    EXPECT_LT(d_penult, kTolerance) << k << ".penult_ln";
    EXPECT_LT(d_pooled, kTolerance) << k << ".pooled";
    // The pooled output does not depend on clip_skip.
    EXPECT_TRUE(torch::equal(out.pooled, skip2.pooled));
    max_last = std::max(max_last, d_last);
    max_penult = std::max(max_penult, d_penult);
    max_pooled = std::max(max_pooled, d_pooled);
  }
  std::printf("max abs error: last %.3g, penult_ln %.3g, pooled %.3g\n", max_last, max_penult,
              max_pooled);
}

TEST(TextEncoder, BatchEqualsSingleRows) {
  SDGEN_REQUIRE_SHARED();
  torch::NoGradGuard no_grad;
  auto model = load_tiny_text_encoder();
  const torch::Tensor ids =
      torch::cat({sdgen::test::golden("tokens.0"), sdgen::test::golden("tokens.3")}, /*dim=*/0);
  const auto out = model->forward(ids);
  ASSERT_EQ(out.hidden.sizes(), (std::vector<int64_t>{2, 77, 32}));
  ASSERT_EQ(out.pooled.sizes(), (std::vector<int64_t>{2, 32}));
  EXPECT_LT(sdgen::test::max_abs_diff(out.hidden[1], sdgen::test::golden("text.3.last")[0]),
            kTolerance);
  EXPECT_LT(sdgen::test::max_abs_diff(out.pooled[0], sdgen::test::golden("text.0.pooled")[0]),
            kTolerance);
}

TEST(TextEncoder, CausalMaskIgnoresLaterTokens) {
  // Random weights: changing token 5 must not change states 0..4.
  torch::manual_seed(0);
  CLIPTextConfig config;
  config.vocab_size = 100;
  config.hidden_size = 16;
  config.intermediate_size = 32;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.max_position_embeddings = 8;
  config.eos_token_id = 99;
  config.hidden_act = "gelu";
  CLIPTextModel model(config);
  sdgen::randomize_parameters(*model);
  torch::NoGradGuard no_grad;
  auto a = torch::tensor({{1, 2, 3, 4, 5, 6, 99, 99}}, torch::kLong);
  auto b = a.clone();
  b[0][5] = 7;
  const auto ya = model->forward(a), yb = model->forward(b);
  EXPECT_LT(sdgen::test::max_abs_diff(ya.hidden.narrow(1, 0, 5), yb.hidden.narrow(1, 0, 5)), 1e-6);
  EXPECT_GT(sdgen::test::max_abs_diff(ya.hidden, yb.hidden), 1e-4);
  // pooled = first eos position (6).
  EXPECT_TRUE(torch::equal(ya.pooled[0], ya.hidden[0][6]));
}

TEST(TextEncoder, BadInputsThrow) {
  CLIPTextConfig config;
  config.vocab_size = 50;
  config.hidden_size = 8;
  config.intermediate_size = 16;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 2;
  config.max_position_embeddings = 6;
  CLIPTextModel model(config);
  sdgen::randomize_parameters(*model);
  torch::NoGradGuard no_grad;
  EXPECT_THROW(model->forward(torch::zeros({1, 7}, torch::kLong)), sdgen::Error);
  EXPECT_THROW(model->forward(torch::zeros({6}, torch::kLong)), sdgen::Error);
  EXPECT_THROW(model->forward(torch::zeros({1, 6}, torch::kLong), 0), sdgen::Error);
  EXPECT_THROW(model->forward(torch::zeros({1, 6}, torch::kLong), 3), sdgen::Error);
  EXPECT_NO_THROW(model->forward(torch::zeros({1, 6}, torch::kLong), 2));
  config.hidden_act = "relu6";
  EXPECT_THROW(CLIPTextModel{config}, sdgen::Error);
  config.hidden_act = "quick_gelu";
  config.num_attention_heads = 3;
  EXPECT_THROW(CLIPTextModel{config}, sdgen::Error);
}
