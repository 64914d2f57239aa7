// sdgen command line: parses arguments and calls the library, nothing more.

#include <ATen/Parallel.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/rng.h"
#include "sdgen/runtime.h"
#include "sdgen/schedulers/scheduler.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model;
  std::string config_dir;
  std::string tokenizer;
  std::string prediction;
  std::string prompt;
  std::string negative_prompt;
  int steps = 50;
  double cfg_scale = 7.5;
  std::optional<uint64_t> seed;
  int width = 512;
  int height = 512;
  std::string sampler = "ddim";
  double eta = 0.0;
  std::string schedule;  // "", karras, normal
  std::string init_image;
  double strength = 0.75;
  bool size_given = false;  // --width or --height on the command line
  int clip_skip = 1;
  int batch_size = 1;
  std::string device = "auto";
  std::string dtype = "auto";
  int threads = 0;
  std::string output = "out.png";
  bool quiet = false;
};

// Errors are printed as one line, whatever the library or libtorch put in them.
std::string one_line(std::string text) {
  for (auto& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

std::string default_model_dir() {
  if (const char* env = std::getenv("SDGEN_DEFAULT_MODEL")) return env;
  return SDGEN_DEFAULT_MODEL_DIR;
}

torch::Device parse_device(const std::string& name) {
  if (name == "auto")
    return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::kCPU;
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw sdgen::Error("--device " + name +
                         ": CUDA is not available in this build of libtorch "
                         "or on this machine; use --device cpu");
    int index = 0;
    if (name.size() > 5) {
      try {
        index = std::stoi(name.substr(5));
      } catch (const std::exception&) {
        throw sdgen::Error("--device " + name + ": expected cuda:N");
      }
    }
    if (index < 0 || index >= static_cast<int>(torch::cuda::device_count()))
      throw sdgen::Error("--device " + name + ": no such GPU (" +
                         std::to_string(torch::cuda::device_count()) + " available)");
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw sdgen::Error("--device " + name + ": expected auto, cpu, cuda or cuda:N");
}

torch::ScalarType parse_dtype(const std::string& name, const torch::Device& device) {
  if (name == "auto") return device.is_cuda() ? torch::kFloat16 : torch::kFloat32;
  if (name == "fp32" || name == "float32") return torch::kFloat32;
  if (name == "fp16" || name == "float16") return torch::kFloat16;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  throw sdgen::Error("--dtype " + name + ": expected auto, fp32, fp16 or bf16");
}

// out.png -> out-0.png, out-1.png, ... when a run makes several images.
std::string numbered_output(const std::string& output, int index, int count) {
  if (count == 1) return output;
  fs::path p(output);
  fs::path name = p.stem().string() + "-" + std::to_string(index) + p.extension().string();
  return (p.parent_path() / name).string();
}

// A1111's name for a canonical sampler name (as in its "Sampler:" field).
std::string sampler_label(const std::string& canonical) {
  static const std::map<std::string, std::string> labels = {{"ddim", "DDIM"},
                                                            {"ddpm", "DDPM"},
                                                            {"pndm", "PLMS"},
                                                            {"euler", "Euler"},
                                                            {"euler_a", "Euler a"},
                                                            {"heun", "Heun"},
                                                            {"lms", "LMS"},
                                                            {"dpmpp_2m", "DPM++ 2M"},
                                                            {"dpmpp_2m_karras", "DPM++ 2M"},
                                                            {"unipc", "UniPC"},
                                                            {"lcm", "LCM"}};
  auto it = labels.find(canonical);
  return it == labels.end() ? canonical : it->second;
}

// The "parameters" text A1111 writes and reads back ("PNG Info").
std::string a1111_parameters(const Options& o, const std::string& sampler, uint64_t seed) {
  std::ostringstream s;
  s << o.prompt << "\n";
  if (!o.negative_prompt.empty()) s << "Negative prompt: " << o.negative_prompt << "\n";
  s << "Steps: " << o.steps << ", Sampler: " << sampler_label(sampler);
  if (o.schedule == "karras" || sampler == "dpmpp_2m_karras") s << ", Schedule type: Karras";
  s << ", CFG scale: " << o.cfg_scale << ", Seed: " << seed << ", Size: " << o.width << "x"
    << o.height << ", Model: " << fs::path(o.model).stem().string();
  if (!o.init_image.empty()) s << ", Denoising strength: " << o.strength;
  if (o.clip_skip > 1) s << ", Clip skip: " << o.clip_skip;
  if (o.eta > 0) s << ", Eta: " << o.eta;
  s << ", Version: sdgen " << SDGEN_VERSION;
  return s.str();
}

// Reads --init-image and settles the output size: the image's own size (down
// to a multiple of 8) unless --width/--height were given; says when it resizes.
torch::Tensor load_init_image(Options& o) {
  auto png = sdgen::read_png(o.init_image);
  auto pixels = png.pixels;
  if (pixels.size(2) == 4 || pixels.size(2) == 2)
    throw sdgen::Error(o.init_image + ": the init image has an alpha channel; save it as RGB");
  if (pixels.size(2) == 1) pixels = pixels.repeat({1, 1, 3});
  const int h = static_cast<int>(pixels.size(0)), w = static_cast<int>(pixels.size(1));
  if (!o.size_given) {
    o.width = w / 8 * 8;
    o.height = h / 8 * 8;
    if (o.width == 0 || o.height == 0)
      throw sdgen::Error(o.init_image + ": the init image is smaller than 8x8 pixels");
  }
  if (o.width != w || o.height != h)
    std::cerr << "sdgen: resizing the init image from " << w << "x" << h << " to " << o.width << "x"
              << o.height << "\n";
  return pixels;
}

int run(Options o) {
  sdgen::init_cpu_runtime(o.threads);

  const torch::Device device = parse_device(o.device);
  const torch::ScalarType dtype = parse_dtype(o.dtype, device);
  if (!device.is_cuda() && dtype == torch::kFloat16)
    throw sdgen::Error("--dtype fp16 is not supported on the CPU; use fp32 or bf16");

  torch::Tensor init_image;
  if (!o.init_image.empty()) init_image = load_init_image(o);
  if (!(o.strength > 0) || o.strength > 1)
    throw sdgen::Error("--strength " + std::to_string(o.strength) + ": must be in (0, 1]");
  if (o.schedule != "" && o.schedule != "karras" && o.schedule != "normal")
    throw sdgen::Error("--scheduler " + o.schedule + ": expected karras or normal");
  // Fail on bad settings and a bad output path before minutes of work, not after.
  for (auto [name, v] : {std::pair<const char*, int>{"width", o.width}, {"height", o.height}})
    if (v <= 0 || v % 8 != 0 || v > 8192)
      throw sdgen::Error(std::string("--") + name + " " + std::to_string(v) +
                         ": must be a positive multiple of 8, at most 8192");
  if (o.steps < 1 || o.steps > 1000)
    throw sdgen::Error("--steps " + std::to_string(o.steps) + ": must be between 1 and 1000");
  if (!(o.cfg_scale >= 0)) throw sdgen::Error("--cfg-scale must be >= 0");
  if (o.batch_size < 1 || o.batch_size > 64)
    throw sdgen::Error("--batch-size " + std::to_string(o.batch_size) + ": must be 1 to 64");
  if (o.clip_skip < 1) throw sdgen::Error("--clip-skip must be >= 1");
  for (int i = 0; i < o.batch_size; ++i)
    sdgen::check_output_path(numbered_output(o.output, i, o.batch_size));
  // Unknown sampler -> error now; its canonical name goes into the metadata.
  const std::string sampler = sdgen::make_scheduler(o.sampler, sdgen::SchedulerConfig{})->name();

  sdgen::LoadOptions load;
  load.model_path = o.model.empty() ? default_model_dir() : o.model;
  if (o.model.empty() && !fs::exists(load.model_path))
    throw sdgen::Error("no --model given and the default model " + load.model_path +
                       " does not exist; run scripts/generate.sh once, or pass --model PATH");
  load.config_dir = o.config_dir;
  load.tokenizer_path = o.tokenizer;
  load.prediction_type = o.prediction;
  load.device = device;
  load.dtype = dtype;
  load.verbose = !o.quiet;

  const auto t0 = std::chrono::steady_clock::now();
  sdgen::StableDiffusionModel model = sdgen::load_model(load);
  const auto t1 = std::chrono::steady_clock::now();

  sdgen::GenerationRequest request;
  request.prompt = o.prompt;
  request.negative_prompt = o.negative_prompt;
  request.steps = o.steps;
  request.cfg_scale = o.cfg_scale;
  request.seed = o.seed ? *o.seed : sdgen::random_seed();
  request.width = o.width;
  request.height = o.height;
  request.batch_size = o.batch_size;
  request.sampler = o.sampler;
  request.eta = o.eta;
  request.clip_skip = o.clip_skip;
  request.schedule = o.schedule;
  request.init_image = init_image;
  request.strength = o.strength;

  sdgen::Pipeline pipeline(model);
  pipeline.validate(request);
  const bool tty = ::isatty(STDERR_FILENO);
  sdgen::StepCallback progress;
  if (!o.quiet)
    progress = [tty, t1](const sdgen::StepInfo& info, const torch::Tensor&) {
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
      if (tty) {
        std::cerr << "\rstep " << info.index + 1 << "/" << info.total << " (" << s << " s)"
                  << std::flush;
        if (info.index + 1 == info.total) std::cerr << "\n";
      } else if (info.index + 1 == info.total) {
        std::cerr << "sdgen: " << info.total << " steps in " << s << " s\n";
      }
    };
  auto result = pipeline.generate(request, progress);
  const auto t2 = std::chrono::steady_clock::now();

  Options meta = o;
  meta.model = load.model_path;
  const std::string params = a1111_parameters(meta, sampler, request.seed);
  for (int i = 0; i < o.batch_size; ++i) {
    const std::string path = numbered_output(o.output, i, o.batch_size);
    sdgen::write_png(path, result.images_u8[i], {{"parameters", params}});
    std::cout << "wrote " << path << " (seed " << request.seed << ")" << std::endl;
  }
  if (!o.quiet)
    std::cerr << "sdgen: load " << std::chrono::duration<double>(t1 - t0).count() << " s, generate "
              << std::chrono::duration<double>(t2 - t1).count() << " s\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"sdgen: Stable Diffusion 1.x/2.x text-to-image on libtorch"};
  app.set_version_flag("--version", std::string("sdgen ") + SDGEN_VERSION);
  app.add_option("-m,--model", o.model,
                 "Model: a diffusers folder (model_index.json) or a single-file .safetensors "
                 "checkpoint (default: the model under models/)");
  app.add_option("--config", o.config_dir,
                 "Diffusers-style folder with unet/ vae/ text_encoder/ config.json that overrides "
                 "the architecture inferred from a single file");
  app.add_option("--tokenizer", o.tokenizer,
                 "Tokenizer folder (vocab.json + merges.txt) or bpe_simple_vocab_16e6.txt.gz");
  app.add_option("--prediction", o.prediction, "Override the prediction type: epsilon or v");
  app.add_option("-p,--prompt", o.prompt, "What to draw")->required();
  app.add_option("-n,--negative-prompt", o.negative_prompt, "What to steer away from");
  app.add_option("--steps", o.steps, "Sampling steps")->capture_default_str();
  app.add_option("--cfg-scale", o.cfg_scale, "Classifier-free guidance scale (1 = off)")
      ->capture_default_str();
  app.add_option("-s,--seed", o.seed, "Seed (random and printed when not given)");
  app.add_option("-W,--width", o.width, "Image width, a multiple of 8")->capture_default_str();
  app.add_option("-H,--height", o.height, "Image height, a multiple of 8")->capture_default_str();
  std::string sampler_names;
  for (const auto& n : sdgen::scheduler_names())
    sampler_names += (sampler_names.empty() ? "" : ", ") + n;
  app.add_option(
         "--sampler", o.sampler,
         "Sampler: " + sampler_names + " (case-insensitive; A1111 names such as \"Euler a\" work)")
      ->capture_default_str();
  app.add_option("--eta", o.eta, "DDIM eta (0 = deterministic)")->capture_default_str();
  app.add_option(
      "--scheduler", o.schedule,
      "Sigma schedule of sigma-based samplers: karras or normal (default: the sampler's)");
  app.add_option("-i,--init-image", o.init_image,
                 "img2img: start from this PNG (RGB); its size is used unless -W/-H are given");
  app.add_option("--strength", o.strength,
                 "img2img: how much of the schedule to run over the init image, 0 < S <= 1")
      ->capture_default_str();
  app.add_option("--clip-skip", o.clip_skip,
                 "Text encoder layer from the end (A1111 convention: 1 = last, 2 = penultimate)")
      ->capture_default_str();
  app.add_option("-b,--batch-size", o.batch_size, "Images per prompt, generated as one batch")
      ->capture_default_str();
  app.add_option("--device", o.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", o.dtype, "auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16")
      ->capture_default_str();
  app.add_option("-t,--threads", o.threads, "CPU threads (default: all cores)");
  app.add_option("-o,--output", o.output,
                 "Output PNG (with several images: NAME-0.png, NAME-1.png, ...)")
      ->capture_default_str();
  app.add_flag("-q,--quiet", o.quiet, "Only print the output paths");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  o.size_given = app.count("--width") > 0 || app.count("--height") > 0;
  for (auto& c : o.schedule) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  try {
    return run(o);
  } catch (const sdgen::Error& e) {
    std::cerr << "sdgen: error: " << one_line(e.what()) << std::endl;
  } catch (const c10::Error& e) {
    std::cerr << "sdgen: error: " << one_line(e.what_without_backtrace()) << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "sdgen: error: " << one_line(e.what()) << std::endl;
  }
  return 1;
}
