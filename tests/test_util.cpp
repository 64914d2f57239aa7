#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <vector>

namespace fs = std::filesystem;

namespace sdgen::test {

std::string shared_dir() {
  if (const char* env = std::getenv("SDGEN_SHARED_DIR")) return env;
  return SDGEN_SHARED_DIR;
}

std::string golden_path() { return shared_dir() + "/golden/sd1/golden.safetensors"; }
std::string tiny_model_dir() { return shared_dir() + "/models/sd1-tiny"; }
std::string tiny_model_file() { return shared_dir() + "/models/sd1-tiny.safetensors"; }
std::string clip_vocab_dir() { return shared_dir() + "/data/clip"; }

bool has_shared() {
  return fs::exists(golden_path()) && fs::exists(tiny_model_dir() + "/model_index.json") &&
         fs::exists(tiny_model_file());
}

const SafeTensorsFile& golden_file() {
  static std::unique_ptr<SafeTensorsFile> file;
  static std::once_flag once;
  std::call_once(once, [] { file = std::make_unique<SafeTensorsFile>(golden_path()); });
  return *file;
}

torch::Tensor golden(const std::string& key) {
  const auto& file = golden_file();
  if (!file.contains(key)) {
    ADD_FAILURE() << "golden tensor '" << key << "' not in " << golden_path();
    return {};
  }
  return file.tensor(key).clone();
}

std::string sdxl_model_dir() { return shared_dir() + "/models/sdxl-tiny"; }
std::string sdxl_model_file() { return shared_dir() + "/models/sdxl-tiny.safetensors"; }

bool has_sdxl() {
  std::error_code ec;
  return std::filesystem::exists(sdxl_model_dir() + "/model_index.json", ec) &&
         std::filesystem::exists(sdxl_model_file(), ec) &&
         std::filesystem::exists(shared_dir() + "/golden/sdxl/golden.safetensors", ec);
}

torch::Tensor sdxl_golden(const std::string& key) {
  static const SafeTensorsFile file(shared_dir() + "/golden/sdxl/golden.safetensors");
  if (!file.contains(key)) {
    ADD_FAILURE() << "golden tensor '" << key << "' not in golden/sdxl";
    return {};
  }
  return file.tensor(key).clone();
}

std::string golden_meta() {
  const auto& meta = golden_file().metadata();
  auto it = meta.find("meta");
  return it == meta.end() ? std::string("{}") : it->second;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  return (a.to(torch::kDouble).cpu() - b.to(torch::kDouble).cpu()).abs().max().item<double>();
}

namespace {
std::vector<std::string>& temp_dirs() {
  static std::vector<std::string> dirs;
  return dirs;
}
void remove_temp_dirs() {
  if (std::getenv("SDGEN_KEEP_TEMP")) return;
  std::error_code ec;
  for (const auto& d : temp_dirs()) fs::remove_all(d, ec);
}
}  // namespace

std::string temp_dir(const std::string& tag) {
  static bool registered = false;
  if (!registered) {
    temp_dirs();  // constructed before the handler is registered, so it outlives it
    // Construct the list first: statics are destroyed in reverse order of
    // registration, so it must outlive the atexit handler that reads it.
    temp_dirs();
    std::atexit(remove_temp_dirs);
    registered = true;
  }
  static int counter = 0;
  fs::path dir = fs::path(binary_dir()) / "test-tmp" /
                 (tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(dir);
  fs::create_directories(dir);
  temp_dirs().push_back(dir.string());
  return dir.string();
}

std::string binary_dir() { return SDGEN_BINARY_DIR; }
std::string source_dir() { return SDGEN_SOURCE_DIR; }

int run(const std::string& command, std::string* output) {
  std::string full = command + " 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buffer{};
  std::string out;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) out.append(buffer.data(), n);
  int status = ::pclose(pipe);
  if (output) *output = out;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

StableDiffusionModel& tiny_model() {
  static StableDiffusionModel model = [] {
    LoadOptions options;
    options.model_path = tiny_model_dir();
    return load_model(options);
  }();
  return model;
}

GenerationRequest request_from_meta(const torch::Tensor& golden_meta, const std::string& sampler) {
  const auto meta = golden_meta.to(torch::kFloat64);
  GenerationRequest r;
  r.prompt = "a photograph of an astronaut riding a horse";
  r.steps = static_cast<int>(meta[0].item<double>());
  r.cfg_scale = meta[1].item<double>();
  r.seed = static_cast<uint64_t>(meta[2].item<double>());
  r.height = static_cast<int>(meta[3].item<double>());
  r.width = static_cast<int>(meta[4].item<double>());
  r.sampler = parse_sampler(sampler);
  return r;
}

GenerationRequest golden_request(const std::string& sampler) {
  GenerationRequest r = request_from_meta(golden("pipe." + sampler + ".meta"), sampler);
  // LCM: guidance 1.0 and no negative prompt (no unconditional pass).
  r.negative_prompt = sampler == "lcm" ? "" : "blurry, low quality";
  return r;
}

void check_golden_pipeline(const std::string& sampler) {
  Pipeline pipeline(tiny_model());
  const auto expected_steps = golden("pipe." + sampler + ".latents_steps");
  std::vector<torch::Tensor> steps;
  const auto result =
      pipeline.generate(golden_request(sampler), [&](const StepInfo&, const torch::Tensor& l) {
        steps.push_back(l.to(torch::kCPU, torch::kFloat32).clone());
      });
  ASSERT_EQ(static_cast<int64_t>(steps.size()), expected_steps.size(0)) << sampler;
  double worst = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto expected = expected_steps[static_cast<int64_t>(i)];
    const double d = max_abs_diff(steps[i], expected);
    worst = std::max(worst, d);
    // 1e-4 of the latents' scale (at least 1): the sigma-scaled latents of the
    // Euler family reach tens, and fp32 kernels differ by CPU (an AVX2-only
    // EPYC gave 1.1e-4 on euler_a, an avx512 one less than 1e-4).
    const double scale = std::max(1.0, expected.abs().max().item<double>());
    EXPECT_LT(d, 1e-4 * scale) << sampler << " step " << i << " (latents up to " << scale << ")";
  }
  const double image_err = max_abs_diff(result.images, golden("pipe." + sampler + ".image"));
  const double u8_err = max_abs_diff(result.images_u8, golden("pipe." + sampler + ".image_u8"));
  std::cout << "[parity] " << sampler << " pipeline: latents max err " << worst << " over "
            << steps.size() << " steps, image max err " << image_err << ", u8 max diff " << u8_err
            << std::endl;
  EXPECT_LT(image_err, 1e-4) << sampler;
  EXPECT_LE(u8_err, 1.0) << sampler;
}

}  // namespace sdgen::test
