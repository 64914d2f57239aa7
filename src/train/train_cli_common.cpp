// Helpers of the sdgen-train subcommands (train_cli_common.h).

#include "train/train_cli_common.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "sdgen/error.h"
#include "sdgen/safetensors.h"
#include "sdgen/weights.h"

namespace sdgen::train::cli {

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void write_text(const fs::path& path, const std::string& text) {
  write_text_file(path.string(), text);
}

void log_line(const std::string& stage, int step, int total, double loss, Clock::time_point start) {
  std::fprintf(stderr, "[%s] step %d/%d loss %.5f  %.0f s\n", stage.c_str(), step, total, loss,
               since(start));
}

DiffusionTrainOptions diffusion_run_options(int steps, int batch, double lr,
                                            const torch::Device& device, const Precision& precision,
                                            const NoiseOptions& noise, int stop_after,
                                            uint64_t seed, const fs::path& checkpoint) {
  DiffusionTrainOptions options;
  options.steps = steps;
  options.batch = batch;
  options.lr = lr;
  options.device = device;
  options.bf16 = precision.autocast(device);
  options.noise_offset = noise.offset;
  options.high_noise_share = noise.high_noise_share;
  options.pyramid_noise = noise.pyramid;
  options.swap_pairs = noise.swap_pairs;
  options.stop_after = stop_after;
  options.seed = seed;
  options.checkpoint = checkpoint.string();
  return options;
}

void save_module(torch::nn::Module& module, const fs::path& path, const std::string& prefix,
                 torch::ScalarType dtype) {
  fs::create_directories(path.parent_path());
  write_safetensors(path.string(), named_tensors(module, prefix, dtype), {{"format", "pt"}});
}

void load_module(torch::nn::Module& module, const fs::path& path, const std::string& prefix,
                 const std::string& what) {
  SafeTensorsFile file(path.string());
  load_weights(module, tensors_with_prefix(file, prefix), what);
}

LatentSet load_latents(const fs::path& path) {
  SafeTensorsFile file(path.string());
  LatentSet data;
  data.latents = file.tensor("latents").clone();
  std::istringstream lines(file.metadata().at("captions"));
  for (std::string line; std::getline(lines, line);) data.captions.push_back(line);
  return data;
}

LatentSet training_latents(AutoencoderKL& vae, const fs::path& path, int count, uint64_t seed,
                           synth::PairLayout layout, const torch::Device& device) {
  if (fs::exists(path)) return load_latents(path);
  const auto start = Clock::now();
  auto data = encode_training_set(
      vae, count, 512, seed,
      [&](int done) {
        if (done % 400 == 0)
          std::fprintf(stderr, "[latents] %d/%d  %.0f s\n", done, count, since(start));
      },
      layout, device);
  std::string joined;
  for (const auto& caption : data.captions) joined += caption + "\n";
  write_safetensors(path.string(), {{"latents", data.latents}}, {{"captions", joined}});
  return data;
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw Error("cannot read " + path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path.string() + ": " + e.what());
  }
}

DemoSizes work_sizes(const fs::path& work) {
  const auto path = work / "architecture.json";
  if (!fs::exists(path)) return {};
  try {
    return DemoSizes::from_json(read_json(path));
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  }
}

Trained work_architecture(const fs::path& work) {
  Trained t;
  t.tokenizer = tokenizer_from_path((work / "tokenizer").string(), {});
  auto* sp = dynamic_cast<SentencePieceTokenizer*>(t.tokenizer.get());
  if (!sp) throw Error("the trained tokenizer is not a SentencePiece model");
  t.arch = demo_architecture(static_cast<int>(sp->vocab_size()), static_cast<int>(sp->bos_id()),
                             static_cast<int>(sp->eos_id()), static_cast<int>(sp->pad_id()),
                             work_sizes(work));
  return t;
}

}  // namespace sdgen::train::cli
