// The model sdgen ships (models/default, trained by scripts/train-default-model.sh):
// it loads through the same code as real checkpoints (diffusers layout,
// SentencePiece tokenizer), and a few held-out prompts at 512x512 give
// pictures the checker (synth_world.h) accepts. A fast version of
// `sdgen-train eval` (20 seeds x 10 prompts, reported in models/README.md).

#include <filesystem>

#include <gtest/gtest.h>

#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/runtime.h"
#include "sdgen/synth_world.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace sdgen;

namespace {

std::string default_model_dir() {
  return (fs::path(test::source_dir()) / "models/default").string();
}

// Until a trained model is committed, models/default is the random tiny model
// generate.sh makes (models/README.md): these tests then skip.
bool is_trained_default_model() {
  const auto dir = fs::path(default_model_dir());
  return fs::exists(dir / "model_index.json") &&
         !SentencePieceTokenizer::find_model((dir / "tokenizer").string()).empty();
}

}  // namespace

TEST(DefaultModel, LoadsThroughTheCheckpointPath) {
  if (!is_trained_default_model())
    GTEST_SKIP() << "models/default is not sdgen's trained model yet";
  LoadOptions options;
  options.model_path = default_model_dir();
  const auto model = load_model(options);
  EXPECT_EQ(model.layout, "diffusers");
  EXPECT_NE(dynamic_cast<const SentencePieceTokenizer*>(model.tokenizer.get()), nullptr);
  EXPECT_EQ(model.tokenizer->max_length(), 77);
  EXPECT_EQ(model.unet->config().sample_size, 64);
  EXPECT_EQ(model.vae->downsample_factor(), 8);
}

// Fixed prompts (held-out pairs and the README's example) and seeds; the
// generation is deterministic, so this is not flaky, and a model that draws
// noise or ignores its prompt fails it.
TEST(DefaultModel, HeldOutPromptsPassTheChecker) {
  if (!is_trained_default_model())
    GTEST_SKIP() << "models/default is not sdgen's trained model yet";
  init_cpu_runtime();
  LoadOptions options;
  options.model_path = default_model_dir();
  options.dtype = torch::kFloat32;  // the CI machine may lack native bf16
  auto model = load_model(options);
  Pipeline pipeline(model);
  auto specs = synth::held_out_specs(10);
  specs.resize(3);
  specs.push_back(*synth::parse_caption("a red circle above a blue square"));
  int passed = 0, total = 0;
  for (const auto& spec : specs) {
    for (uint64_t seed : {0, 1}) {
      GenerationRequest request;
      request.prompt = spec.caption();
      request.steps = 20;
      request.seed = seed;
      const auto result = pipeline.generate(request);
      const auto check = synth::check_image(spec, result.images_u8[0]);
      ++total;
      passed += check.pass ? 1 : 0;
      if (!check.pass)
        std::cout << "  " << request.prompt << " seed " << seed << ": " << check.reason << "\n";
    }
  }
  std::cout << "passed " << passed << "/" << total << "\n";
  EXPECT_GE(passed, total * 3 / 4);
}
