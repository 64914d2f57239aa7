// Model loading: both layouts, stored dtypes vs compute dtypes, tokenizer
// discovery and the errors a user sees for files that are not SD models.

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "sdgen/error.h"
#include "sdgen/model.h"
#include "sdgen/model_files.h"
#include "sdgen/pipeline.h"
#include "sdgen/safetensors.h"
#include "sdgen/weights.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

GenerationRequest golden_request() {
  GenerationRequest r;
  r.prompt = "a photograph of an astronaut riding a horse";
  r.negative_prompt = "blurry, low quality";
  r.steps = 10;
  r.seed = 42;
  r.width = 64;
  r.height = 64;
  return r;
}

std::string error_of(const LoadOptions& options) {
  try {
    load_model(options);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error loading " << options.model_path;
  return "";
}

// A copy of the tiny single file with every floating tensor stored as `dtype`.
std::string single_file_as(torch::ScalarType dtype, const std::string& dir) {
  SafeTensorsFile src(test::tiny_model_file());
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& name : src.names()) {
    auto t = src.tensor(name);
    tensors.emplace_back(name, t.is_floating_point() ? t.to(dtype) : t);
  }
  const std::string path = dir + "/tiny-" + std::string(c10::toString(dtype)) + ".safetensors";
  write_safetensors(path, tensors);
  return path;
}

TEST(Model, BothLayoutsLoadTheSameWeights) {
  SDGEN_REQUIRE_SHARED();
  LoadOptions folder;
  folder.model_path = test::tiny_model_dir();
  auto a = load_model(folder);
  EXPECT_EQ(a.layout, "diffusers");
  EXPECT_EQ(a.family, "SD1.x");
  LoadOptions single;
  single.model_path = test::tiny_model_file();
  single.config_dir = test::tiny_model_dir();
  auto b = load_model(single);
  EXPECT_EQ(b.layout, "single-file");
  EXPECT_EQ(b.family, "SD1.x");
  auto pa = a.unet->named_parameters();
  auto pb = b.unet->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
  EXPECT_EQ(a.scheduler_config.prediction_type, "epsilon");
}

TEST(Model, HalfPrecisionFilesLoadIntoFp32) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("model");
  for (auto dtype : {torch::kFloat16, torch::kBFloat16}) {
    LoadOptions options;
    options.model_path = single_file_as(dtype, dir);
    options.config_dir = test::tiny_model_dir();
    auto model = load_model(options);
    EXPECT_EQ(model.unet->parameters()[0].scalar_type(), torch::kFloat32);
    Pipeline pipeline(model);
    auto result = pipeline.generate(golden_request());
    // Only the stored weights were rounded; the image stays close to diffusers' fp32 one.
    const double err = test::max_abs_diff(result.images, test::golden("pipe.ddim.image"));
    std::cout << "[parity] tiny model stored as " << c10::toString(dtype)
              << ", computed in fp32: image max err " << err << std::endl;
    EXPECT_LT(err, dtype == torch::kFloat16 ? 0.005 : 0.03);
  }
}

TEST(Model, Bf16ComputeOnCpu) {
  SDGEN_REQUIRE_SHARED();
  LoadOptions options;
  options.model_path = test::tiny_model_dir();
  options.dtype = torch::kBFloat16;
  auto model = load_model(options);
  EXPECT_EQ(model.unet->parameters()[0].scalar_type(), torch::kBFloat16);
  Pipeline pipeline(model);
  auto result = pipeline.generate(golden_request());
  const double err = test::max_abs_diff(result.images, test::golden("pipe.ddim.image"));
  std::cout << "[parity] tiny model computed in bf16: image max err " << err << std::endl;
  EXPECT_TRUE(torch::isfinite(result.images).all().item<bool>());
  EXPECT_LT(err, 0.08);
}

TEST(Model, PredictionOverride) {
  SDGEN_REQUIRE_SHARED();
  LoadOptions options;
  options.model_path = test::tiny_model_dir();
  options.prediction_type = "v";
  EXPECT_EQ(load_model(options).scheduler_config.prediction_type, "v_prediction");
  options.prediction_type = "x0";
  EXPECT_NE(error_of(options).find("unknown prediction type"), std::string::npos);
}

TEST(Model, TokenizerSearchSaysWhereItLooked) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("model");
  // A config folder without tokenizer files, next to a copy-free path of the checkpoint.
  for (const char* part : {"unet", "vae", "text_encoder"}) {
    fs::create_directories(dir + "/config/" + part);
    fs::copy_file(test::tiny_model_dir() + "/" + part + "/config.json",
                  dir + "/config/" + part + "/config.json");
  }
  ::setenv("SDGEN_TOKENIZER", (dir + "/no-tokenizer-here").c_str(), 1);
  LoadOptions options;
  options.model_path = test::tiny_model_file();
  options.config_dir = dir + "/config";
  const std::string message = error_of(options);
  EXPECT_NE(message.find("no CLIP tokenizer"), std::string::npos) << message;
  EXPECT_NE(message.find(dir + "/config/tokenizer"), std::string::npos) << message;
  EXPECT_NE(message.find(dir + "/no-tokenizer-here"), std::string::npos) << message;
  EXPECT_NE(message.find("--tokenizer"), std::string::npos) << message;
  // ... and the OpenAI .gz vocabulary works as --tokenizer.
  options.tokenizer_path = test::clip_vocab_dir() + "/bpe_simple_vocab_16e6.txt.gz";
  EXPECT_NO_THROW(load_model(options));
  ::unsetenv("SDGEN_TOKENIZER");
}

// resolve_model_files names the files load_model reads, for both layouts,
// and refuses what load_model refuses before reading anything.
TEST(Model, ResolveModelFilesNamesWhatIsLoaded) {
  SDGEN_REQUIRE_SHARED();
  const fs::path root(test::tiny_model_dir());
  LoadOptions options;
  options.model_path = root.string();
  const ModelFiles folder = resolve_model_files(options);
  EXPECT_EQ(folder.layout, ModelLayout::diffusers);
  EXPECT_STREQ(layout_name(folder.layout), "diffusers");
  EXPECT_EQ(folder.model_index, (root / "model_index.json").string());
  EXPECT_EQ(folder.text_encoder.weights, (root / "text_encoder" / "model.safetensors").string());
  EXPECT_EQ(folder.unet.weights, (root / "unet" / "diffusion_pytorch_model.safetensors").string());
  EXPECT_EQ(folder.vae.config, (root / "vae" / "config.json").string());
  EXPECT_EQ(folder.scheduler_config, (root / "scheduler" / "scheduler_config.json").string());
  EXPECT_EQ(folder.tokenizer, (root / "tokenizer").string());
  EXPECT_FALSE(folder.tokenizer_given);
  EXPECT_EQ(load_model(options).layout, "diffusers");

  // A single file: every part from the checkpoint, configs from --config.
  options.model_path = test::tiny_model_file();
  options.config_dir = root.string();
  const ModelFiles single = resolve_model_files(options);
  EXPECT_EQ(single.layout, ModelLayout::single_file);
  EXPECT_STREQ(layout_name(single.layout), "single-file");
  EXPECT_EQ(single.model_index, "");
  for (const ComponentFiles* part : {&single.text_encoder, &single.unet, &single.vae})
    EXPECT_EQ(part->weights, options.model_path);
  EXPECT_EQ(single.unet.config, (root / "unet" / "config.json").string());
  EXPECT_EQ(single.scheduler_config, (root / "scheduler" / "scheduler_config.json").string());
  ASSERT_GE(single.tokenizer_candidates.size(), 2u);
  EXPECT_EQ(single.tokenizer_candidates[0], (root / "tokenizer").string());
  EXPECT_EQ(single.tokenizer_candidates[1],
            (fs::path(options.model_path).parent_path() / "tokenizer").string());
  EXPECT_EQ(single.tokenizer, (root / "tokenizer").string());
  // ... without --config its configs are inferred and the scheduler is the built-in one.
  options.config_dir.clear();
  options.tokenizer_path = "my-tokenizer";
  const ModelFiles inferred = resolve_model_files(options);
  EXPECT_EQ(inferred.unet.config, "");
  EXPECT_EQ(inferred.scheduler_config, "");
  EXPECT_EQ(inferred.tokenizer, "my-tokenizer");
  EXPECT_TRUE(inferred.tokenizer_given);

  const auto dir = test::temp_dir("model");
  std::ofstream(dir + "/model.ckpt") << "not really a pickle";
  for (const auto& [path, words] :
       std::vector<std::pair<std::string, std::string>>{{"", "no model given"},
                                                        {dir + "/nope", "model not found"},
                                                        {dir, "without model_index.json"},
                                                        {dir + "/model.ckpt", "pickle"}}) {
    options.model_path = path;
    try {
      resolve_model_files(options);
      ADD_FAILURE() << "'" << path << "' resolved";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  }
}

TEST(Model, NotAStableDiffusionModel) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("model");
  LoadOptions options;
  // A text-encoder-only file.
  options.model_path = test::tiny_model_dir() + "/text_encoder/model.safetensors";
  std::string m = error_of(options);
  EXPECT_NE(m.find(options.model_path), std::string::npos) << m;
  // A pickle checkpoint is refused without being opened.
  std::ofstream(dir + "/model.ckpt") << "not really a pickle";
  options.model_path = dir + "/model.ckpt";
  m = error_of(options);
  EXPECT_NE(m.find("pickle"), std::string::npos) << m;
  // A tensor of the wrong shape names the key and both shapes.
  SafeTensorsFile src(test::tiny_model_file());
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& name : src.names()) tensors.emplace_back(name, src.tensor(name));
  for (auto& [name, t] : tensors)
    if (name == "model.diffusion_model.out.2.weight") t = torch::zeros({4, 32, 1, 1});
  write_safetensors(dir + "/bad-shape.safetensors", tensors);
  options.model_path = dir + "/bad-shape.safetensors";
  options.config_dir = test::tiny_model_dir();
  m = error_of(options);
  EXPECT_NE(m.find("conv_out.weight (expected [4, 32, 3, 3], found [4, 32, 1, 1])"),
            std::string::npos)
      << m;
  // A missing tensor is named.
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                               [](const auto& kv) {
                                 return kv.first == "model.diffusion_model.out.2.weight";
                               }),
                tensors.end());
  write_safetensors(dir + "/missing.safetensors", tensors);
  options.model_path = dir + "/missing.safetensors";
  m = error_of(options);
  EXPECT_NE(m.find("missing (conv_out.weight)"), std::string::npos) << m;
}

}  // namespace
}  // namespace sdgen
