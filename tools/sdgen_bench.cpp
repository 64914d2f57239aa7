// sdgen-bench: speed and memory of the whole pipeline on a full-size model.
//
//   sdgen-bench [--model FILE] [--device cuda] [--dtype fp16] [--steps 50] ...
//
// Without --model it writes (once) a full-size SD1.5-shaped checkpoint of
// random fp16 weights from ../shared/data/manifests.json and uses that. It
// loads the model (timed), warms up (CUDA graph capture, cuDNN algorithm
// search), generates timed images and prints ONE JSON line on stdout:
// device, dtype, batch, size, steps, load s, text-encode s, UNet it/s, VAE
// decode s, total s per image, images/s per batch size, peak GPU memory and
// peak resident memory. Progress goes to stderr. --mixed-prompts N adds the
// images/s of N different prompts (and seeds) generated as a prompt file
// would be: in mixed-prompt batches of --max-batch, and one at a time.

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <vector>

#include <torch/torch.h>
#include <torch/version.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "nn/winograd_cpu.h"
#include "sdgen/device_info.h"
#include "sdgen/error.h"
#include "sdgen/lora.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/random_model.h"
#include "sdgen/runtime.h"

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string model;
  std::string tokenizer;
  std::string manifest = std::string(SDGEN_SHARED_DIR_DEFAULT) + "/data/manifests.json";
  std::string manifest_key = "sd15.single";
  std::string cache = "";  // where the generated checkpoint goes
  std::string device = "auto";
  std::string dtype = "auto";
  std::string vae_dtype = "auto";
  int width = 512, height = 512, steps = 50, batch_size = 1;
  std::string sampler = "ddim";
  double cfg_scale = 7.5;
  std::string batch_sizes = "";  // images/s for these batch sizes (default: 1,4 on CUDA)
  int repeats = 0;               // timed images per batch size (default 3 on CUDA, 1 on CPU)
  int warmup_steps = 2;
  bool no_cuda_graphs = false;
  std::string channels_last = "auto";
  int threads = 0;
  std::string label;
  bool load_only = false;
  int lora_rank = 0;                  // > 0: time merging a random LoRA of this rank
  int mixed_prompts = 0;              // > 0: images/s of this many different prompts
  int max_batch = 0;                  // their batch (default: 8 on CUDA, 4 on CPU)
  bool one_call_cpu_batches = false;  // CPU: one UNet call per batch (not bit-exact)
  bool cpu_convolutions = false;      // time SD1.5's 3x3 convolutions per CPU kernel
};

// `n` different prompts and seeds of one-chunk length, some with a negative
// prompt, as a prompt file of different subjects would give.
std::vector<sdgen::GenerationRequest> mixed_requests(const sdgen::GenerationRequest& base, int n) {
  const char* subjects[] = {"an astronaut riding a horse", "a red fox in the snow",
                            "a lighthouse at dusk",        "a bowl of ramen",
                            "a castle on a hill",          "a cat wearing a hat",
                            "a city street in the rain"};
  const char* styles[] = {"oil painting", "photograph, 4k", "watercolor, soft light",
                          "(detailed:1.2) illustration", "pencil sketch"};
  std::vector<sdgen::GenerationRequest> out;
  for (int i = 0; i < n; ++i) {
    sdgen::GenerationRequest r = base;
    r.prompt = std::string(subjects[i % 7]) + ", " + styles[(i / 7) % 5] + ", variation " +
               std::to_string(i);
    r.negative_prompt = i % 2 ? "blurry, low quality" : "";
    r.seed = 1000 + static_cast<uint64_t>(i);
    r.batch_size = 1;
    out.push_back(std::move(r));
  }
  return out;
}

// Seconds to generate `requests` in consecutive batches of up to
// `max_batch`; their uint8 images in `images`.
double time_mixed(sdgen::Pipeline& pipeline, const std::vector<sdgen::GenerationRequest>& requests,
                  int max_batch, std::vector<torch::Tensor>& images) {
  images.clear();
  const auto start = std::chrono::steady_clock::now();
  for (size_t i = 0; i < requests.size(); i += static_cast<size_t>(max_batch)) {
    const size_t end = std::min(requests.size(), i + static_cast<size_t>(max_batch));
    const std::vector<sdgen::GenerationRequest> batch(requests.begin() + static_cast<long>(i),
                                                      requests.begin() + static_cast<long>(end));
    for (const auto& res : pipeline.generate_batch(batch)) {
      if (!torch::isfinite(res.images).all().item<bool>())
        throw sdgen::Error("a mixed-prompt benchmark image has non-finite values");
      images.push_back(res.images_u8);
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A random LoRA of `rank` on the layers kohya's LoRA trains by default (the
// transformer blocks' linear layers of the UNet, the text encoders'
// attention and MLP), in memory, alpha = rank / 2.
sdgen::LoraFile random_lora(const sdgen::StableDiffusionModel& model, int rank) {
  sdgen::LoraFile file;
  file.path = file.name = "random-rank-" + std::to_string(rank);
  file.format = "kohya";
  auto add = [&](sdgen::LoraTarget target, const torch::nn::Module& module, bool unet) {
    for (const auto& p : module.named_parameters()) {
      const std::string& name = p.key();
      const auto& w = p.value();
      if (w.dim() != 2 || name.size() < 7 || name.compare(name.size() - 7, 7, ".weight") != 0)
        continue;
      if (unet ? name.find(".transformer_blocks.") == std::string::npos
               : name.find(".self_attn.") == std::string::npos &&
                     name.find(".mlp.") == std::string::npos)
        continue;
      sdgen::LoraLayer l;
      l.target = target;
      l.parameter = name;
      l.key = name;
      l.rank = rank;
      l.alpha = rank / 2.0;
      l.down = torch::randn({rank, w.size(1)}).to(w.device(), w.scalar_type()) * 0.01;
      l.up = torch::randn({w.size(0), rank}).to(w.device(), w.scalar_type()) * 0.01;
      file.layers.push_back(std::move(l));
    }
  };
  add(sdgen::LoraTarget::unet, *model.unet, true);
  add(sdgen::LoraTarget::text_encoder, *model.text_encoder, false);
  if (model.text_encoder_2) add(sdgen::LoraTarget::text_encoder_2, *model.text_encoder_2, false);
  file.max_rank = rank;
  return file;
}

std::vector<int> parse_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream s(text);
  std::string item;
  while (std::getline(s, item, ','))
    if (!item.empty()) out.push_back(std::stoi(item));
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

double mb(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

// --cpu-convolutions: every 3x3 stride-1 convolution of an SD1.5 UNet
// evaluation with guidance (batch 2, 64x64 latents) and of a VAE decode at
// 512x512, fp32 on the CPU, timed per distinct shape with libtorch's conv2d
// (oneDNN), each Winograd kernel and the one sdgen picks
// (src/nn/winograd_cpu.h): best of `repeats` (default 2) after one warm-up.
// One JSON line per shape, then one with the totals.
int run_cpu_convolutions(const Options& o) {
  sdgen::init_cpu_runtime(o.threads);
  torch::NoGradGuard no_grad;
  struct Shape {
    const char* model;
    int64_t batch, in, out, size, count;  // count: convolutions of this shape per pass
  };
  const std::vector<Shape> shapes{{"unet", 2, 320, 320, 64, 7},   {"unet", 2, 960, 320, 64, 1},
                                  {"unet", 2, 640, 320, 64, 2},   {"unet", 2, 640, 640, 64, 1},
                                  {"unet", 2, 320, 640, 32, 1},   {"unet", 2, 640, 640, 32, 6},
                                  {"unet", 2, 1920, 640, 32, 1},  {"unet", 2, 1280, 640, 32, 1},
                                  {"unet", 2, 960, 640, 32, 1},   {"unet", 2, 1280, 1280, 32, 1},
                                  {"unet", 2, 640, 1280, 16, 1},  {"unet", 2, 1280, 1280, 16, 7},
                                  {"unet", 2, 2560, 1280, 16, 2}, {"unet", 2, 1920, 1280, 16, 1},
                                  {"unet", 2, 1280, 1280, 8, 11}, {"unet", 2, 2560, 1280, 8, 3},
                                  {"unet", 2, 4, 320, 64, 1},     {"unet", 2, 320, 4, 64, 1},
                                  {"vae", 1, 4, 512, 64, 1},      {"vae", 1, 512, 512, 64, 10},
                                  {"vae", 1, 512, 512, 128, 7},   {"vae", 1, 512, 512, 256, 1},
                                  {"vae", 1, 512, 256, 256, 1},   {"vae", 1, 256, 256, 256, 5},
                                  {"vae", 1, 256, 256, 512, 1},   {"vae", 1, 256, 128, 512, 1},
                                  {"vae", 1, 128, 128, 512, 5},   {"vae", 1, 128, 3, 512, 1}};
  using sdgen::nn::WinogradKernel;
  const std::vector<std::pair<std::string, std::optional<WinogradKernel>>> methods{
      {"onednn", std::nullopt},
      {"f2_banded", WinogradKernel::kF2Banded},
      {"f4_banded", WinogradKernel::kF4Banded},
      {"f2_k_blocked", WinogradKernel::kF2KBlocked}};
  const int repeats = o.repeats > 0 ? o.repeats : 2;
  std::map<std::string, std::map<std::string, double>> totals;  // model -> method -> seconds
  for (const Shape& s : shapes) {
    torch::manual_seed(0);
    const auto x = torch::randn({s.batch, s.in, s.size, s.size});
    const auto w = torch::randn({s.out, s.in, 3, 3}) / std::sqrt(9.0 * s.in);
    const auto b = torch::randn({s.out});
    const auto chosen = sdgen::nn::winograd_kernel_for(s.in, s.out, s.size, s.size);
    nlohmann::json line{{"model", s.model},
                        {"batch", s.batch},
                        {"in", s.in},
                        {"out", s.out},
                        {"size", s.size},
                        {"count", s.count},
                        {"threads", at::get_num_threads()}};
    for (const auto& [name, kernel] : methods) {
      const auto once = [&, kernel = kernel] {
        return kernel ? sdgen::nn::conv3x3_winograd_always(x, w, b, *kernel)
                      : torch::conv2d(x, w, b, 1, 1);
      };
      once();
      double best = 1e30;
      for (int r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        once();
        best = std::min(
            best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      line[name + "_ms"] = best * 1e3;
      auto& total = totals[std::string(s.model) + "_s"];
      total[name] += best * s.count;
      if (kernel == chosen) {
        line["chosen"] = name;
        total["chosen"] += best * s.count;
      }
    }
    std::cout << line.dump() << std::endl;
  }
  nlohmann::json summary(totals);
  summary["what"] = "3x3 convolutions per UNet evaluation (unet_s) and per VAE decode (vae_s)";
  std::cout << summary.dump() << std::endl;
  return 0;
}

int run(const Options& o) {
  sdgen::init_cpu_runtime(o.threads);
  const torch::Device device = sdgen::device_from_name(o.device);
  const torch::ScalarType dtype = sdgen::dtype_from_name(o.dtype, sdgen::default_dtype(device));
  const auto say = [](const std::string& s) { std::cerr << "sdgen-bench: " << s << std::endl; };

  std::string model_path = o.model;
  if (model_path.empty()) {
    model_path =
        o.cache.empty()
            ? (fs::temp_directory_path() / ("sdgen-bench-" + o.manifest_key + "-fp16.safetensors"))
                  .string()
            : o.cache;
    if (!fs::exists(model_path)) {
      say("writing a random " + o.manifest_key + " checkpoint to " + model_path);
      sdgen::write_random_checkpoint(o.manifest, o.manifest_key, model_path, "fp16", 0);
    }
  }
  std::string tokenizer = o.tokenizer;
  const std::string shared_clip = std::string(SDGEN_SHARED_DIR_DEFAULT) + "/data/clip";
  if (tokenizer.empty() && fs::exists(shared_clip)) tokenizer = shared_clip;

  // Load (timed): file to device, dtype conversion, layout.
  sdgen::LoadOptions load;
  load.model_path = model_path;
  load.tokenizer_path = tokenizer;
  load.device = device;
  load.dtype = dtype;
  load.weights_as_stored = sdgen::weights_as_stored_from_name(o.dtype, device);
  if (o.vae_dtype != "auto") load.vae_dtype = sdgen::dtype_from_name(o.vae_dtype, dtype);
  load.cuda_graphs = !o.no_cuda_graphs;
  load.channels_last = o.channels_last == "auto" ? -1 : o.channels_last == "on" ? 1 : 0;
  sdgen::reset_peak_gpu_memory(device);
  if (device.is_cuda()) torch::cuda::synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  auto model = sdgen::load_model(load);
  if (device.is_cuda()) torch::cuda::synchronize();
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  say("loaded in " + std::to_string(load_s) + " s");
  nlohmann::json lora_result;
  if (o.lora_rank > 0) {
    // Merge (twice: the first pays for first-touch allocations) and restore.
    const sdgen::LoraFile lora = random_lora(model, o.lora_rank);
    sdgen::LoraMerger merger(model);
    merger.apply({{&lora, 1.0, 1.0}});
    const double first = merger.last_apply_seconds();
    merger.restore();
    const double restore = merger.last_apply_seconds();
    merger.apply({{&lora, 1.0, 1.0}});
    lora_result = {{"lora_rank", o.lora_rank},
                   {"lora_layers", lora.layers.size()},
                   {"lora_merge_first_s", first},
                   {"lora_merge_s", merger.last_apply_seconds()},
                   {"lora_restore_s", restore}};
    merger.restore();
    say("LoRA rank " + std::to_string(o.lora_rank) + " (" + std::to_string(lora.layers.size()) +
        " layers): merge " + lora_result["lora_merge_s"].dump() + " s, restore " +
        std::to_string(restore) + " s");
  }
  if (o.load_only) {
    nlohmann::json r = {{"label", o.label},
                        {"device", sdgen::device_name(device)},
                        {"dtype", sdgen::dtype_name(model.dtype)},
                        {"load_s", load_s},
                        {"peak_rss_mb", mb(sdgen::peak_rss_bytes())},
                        {"rss_after_load_mb", mb(sdgen::current_rss_bytes())}};
    if (!lora_result.is_null()) r.update(lora_result);
    std::cout << r.dump() << std::endl;
    return 0;
  }

  sdgen::Pipeline pipeline(model);
  pipeline.set_exact_cpu_batches(!o.one_call_cpu_batches);
  auto request_for = [&](int batch, int steps) {
    sdgen::GenerationRequest r;
    r.prompt = "a photograph of an astronaut riding a horse on the moon, detailed, 4k";
    r.negative_prompt = "blurry, low quality";
    r.steps = steps;
    r.cfg_scale = o.cfg_scale;
    r.seed = 42;
    r.width = o.width;
    r.height = o.height;
    r.batch_size = batch;
    r.sampler = sdgen::parse_sampler(o.sampler);
    return r;
  };

  std::vector<int> batches = parse_list(o.batch_sizes);
  if (batches.empty())
    batches = device.is_cuda() ? std::vector<int>{o.batch_size, 4} : std::vector<int>{o.batch_size};
  if (std::find(batches.begin(), batches.end(), o.batch_size) == batches.end())
    batches.insert(batches.begin(), o.batch_size);
  std::sort(batches.begin(), batches.end());
  batches.erase(std::unique(batches.begin(), batches.end()), batches.end());
  const int repeats = o.repeats > 0 ? o.repeats : (device.is_cuda() ? 3 : 1);

  nlohmann::json result;
  nlohmann::json images_per_s = nlohmann::json::object();
  double peak_alloc_main = 0, peak_reserved_main = 0;
  for (int batch : batches) {
    if (o.warmup_steps > 0) {
      say("warm-up, batch " + std::to_string(batch));
      pipeline.generate(request_for(batch, o.warmup_steps));
    }
    std::vector<double> text, sampling, decode, total;
    for (int i = 0; i < repeats; ++i) {
      const auto start = std::chrono::steady_clock::now();
      auto res = pipeline.generate(request_for(batch, o.steps));
      const double wall =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (!torch::isfinite(res.images).all().item<bool>())
        throw sdgen::Error("the benchmark image has non-finite values");
      text.push_back(res.timings.text_s);
      sampling.push_back(res.timings.sampling_s);
      decode.push_back(res.timings.decode_s);
      total.push_back(wall);
      say("batch " + std::to_string(batch) + ": " + std::to_string(wall) + " s (UNet " +
          std::to_string(res.timings.steps / res.timings.sampling_s) + " it/s)");
    }
    images_per_s[std::to_string(batch)] = batch / median(total);
    if (batch == o.batch_size) {
      result["text_encode_s"] = median(text);
      result["unet_it_s"] = o.steps / median(sampling);
      result["unet_step_s"] = median(sampling) / o.steps;
      result["vae_decode_s"] = median(decode);
      result["total_s_per_image"] = median(total) / batch;
      result["total_s"] = median(total);
      result["fixed_s"] = load_s + median(text) + median(decode);
      const auto gpu = sdgen::peak_gpu_memory(device);
      peak_alloc_main = mb(gpu.peak_allocated_bytes);
      peak_reserved_main = mb(gpu.peak_reserved_bytes);
    }
  }
  if (o.mixed_prompts > 0) {
    // A prompt file's throughput: each image its own prompt, negative prompt
    // and seed, in mixed-prompt batches against one request at a time.
    const int max_batch = o.max_batch > 0 ? o.max_batch : (device.is_cuda() ? 8 : 4);
    const auto requests = mixed_requests(request_for(1, o.steps), o.mixed_prompts);
    if (o.warmup_steps > 0) {
      say("warm-up, mixed batch " + std::to_string(max_batch));
      pipeline.generate_batch(mixed_requests(request_for(1, o.warmup_steps), max_batch));
    }
    std::vector<torch::Tensor> batched_images, single_images;
    const double batched_s = time_mixed(pipeline, requests, max_batch, batched_images);
    say(std::to_string(o.mixed_prompts) + " mixed prompts, max batch " + std::to_string(max_batch) +
        ": " + std::to_string(batched_s) + " s");
    if (o.warmup_steps > 0) pipeline.generate(request_for(1, o.warmup_steps));
    const double single_s = time_mixed(pipeline, requests, 1, single_images);
    say(std::to_string(o.mixed_prompts) +
        " mixed prompts, one at a time: " + std::to_string(single_s) + " s");
    // Batched against alone: 0 on the CPU in fp32, a few levels in fp16.
    double max_u8_diff = 0;
    for (size_t k = 0; k < batched_images.size(); ++k)
      max_u8_diff = std::max(
          max_u8_diff, (batched_images[k].to(torch::kInt32) - single_images[k].to(torch::kInt32))
                           .abs()
                           .max()
                           .item<double>());
    result["mixed_prompts"] = o.mixed_prompts;
    result["mixed_max_batch"] = max_batch;
    result["mixed_images_per_s"] = o.mixed_prompts / batched_s;
    result["mixed_images_per_s_max_batch_1"] = o.mixed_prompts / single_s;
    result["mixed_speedup"] = single_s / batched_s;
    result["mixed_max_u8_diff"] = max_u8_diff;
    result["mixed_one_call"] = device.is_cuda() || o.one_call_cpu_batches;
  }
  const auto gpu = sdgen::peak_gpu_memory(device);
  result["label"] = o.label;
  result["device"] = sdgen::device_name(device);
  result["torch"] = TORCH_VERSION;
  result["threads"] = at::get_num_threads();
  result["dtype"] = model.weights_as_stored ? "fp32-lowmem" : sdgen::dtype_name(model.dtype);
  result["vae_dtype"] = sdgen::dtype_name(model.vae_dtype);
  result["batch"] = o.batch_size;
  result["width"] = o.width;
  result["height"] = o.height;
  result["steps"] = o.steps;
  result["sampler"] = o.sampler;
  result["cfg_scale"] = o.cfg_scale;
  result["cuda_graphs"] = device.is_cuda() && model.cuda_graphs;
  result["channels_last"] = model.channels_last;
  result["load_s"] = load_s;
  result["images_per_s"] = images_per_s;
  result["repeats"] = repeats;
  if (device.is_cuda()) {
    result["peak_gpu_allocated_mb"] = peak_alloc_main;
    result["peak_gpu_reserved_mb"] = peak_reserved_main;
    result["peak_gpu_reserved_mb_all_batches"] = mb(gpu.peak_reserved_bytes);
  }
  result["peak_rss_mb"] = mb(sdgen::peak_rss_bytes());
  result["model"] = model_path;
  if (!lora_result.is_null()) result.update(lora_result);
  std::cout << result.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"sdgen-bench: time the whole pipeline on a full-size model; prints one JSON line"};
  app.add_option("-m,--model", o.model,
                 "Checkpoint or diffusers folder (default: a random SD1.5-shaped fp16 checkpoint "
                 "made from --manifest)");
  app.add_option("--tokenizer", o.tokenizer, "Tokenizer folder (default: ../shared/data/clip)");
  app.add_option("--manifest", o.manifest, "manifests.json for the random checkpoint")
      ->capture_default_str();
  app.add_option("--manifest-key", o.manifest_key, "Manifest entry")->capture_default_str();
  app.add_option("--cache", o.cache,
                 "Where the random checkpoint is written once and reused (default: in $TMPDIR)");
  app.add_option("--device", o.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  app.add_option(
         "--dtype", o.dtype,
         "auto (fp16 on CUDA; bf16 on a CPU with native bf16, else fp32), fp32, fp16 or bf16")
      ->capture_default_str();
  app.add_option("--vae-dtype", o.vae_dtype, "auto (= --dtype), fp32, fp16 or bf16")
      ->capture_default_str();
  app.add_option("-W,--width", o.width, "Image width")->capture_default_str();
  app.add_option("-H,--height", o.height, "Image height")->capture_default_str();
  app.add_option("--steps", o.steps, "Sampling steps")->capture_default_str();
  app.add_option("-b,--batch-size", o.batch_size, "Images per batch for the main figures")
      ->capture_default_str();
  app.add_option("--batch-sizes", o.batch_sizes,
                 "Comma-separated batch sizes for images/s (default: 1,4 on CUDA, the batch size "
                 "on CPU)");
  app.add_option("--sampler", o.sampler, "Sampler")->capture_default_str();
  app.add_option("--cfg-scale", o.cfg_scale, "Guidance scale")->capture_default_str();
  app.add_option("--repeats", o.repeats, "Timed images per batch size (median reported)");
  app.add_option("--warmup-steps", o.warmup_steps, "Steps of the warm-up image per batch size")
      ->capture_default_str();
  app.add_flag("--no-cuda-graphs", o.no_cuda_graphs, "Run the UNet eagerly on CUDA");
  app.add_option("--channels-last", o.channels_last, "on, off or auto")->capture_default_str();
  app.add_option("-t,--threads", o.threads, "CPU threads (default: all cores)");
  app.add_option("--label", o.label, "A label copied into the JSON");
  app.add_flag("--load-only", o.load_only, "Only load the model: load time and memory");
  app.add_option("--lora-rank", o.lora_rank,
                 "Also time merging and restoring a random LoRA of this rank (kohya's default "
                 "layers)");
  app.add_option("--mixed-prompts", o.mixed_prompts,
                 "Also time N different prompts and seeds (a prompt file) in mixed-prompt batches "
                 "and one at a time: mixed_images_per_s, mixed_images_per_s_max_batch_1");
  app.add_option("--max-batch", o.max_batch,
                 "Images per mixed-prompt batch (default: 8 on CUDA, 4 on CPU)");
  app.add_flag("--one-call-cpu-batches", o.one_call_cpu_batches,
               "CPU: run a mixed batch's UNet and VAE as one call, as on CUDA (within rounding "
               "of alone), instead of per request (bit for bit)");
  app.add_flag("--cpu-convolutions", o.cpu_convolutions,
               "Only time SD1.5's 3x3 convolutions on the CPU (fp32, UNet and VAE shapes at "
               "512x512) with oneDNN and each Winograd kernel; one JSON line per shape");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (o.cpu_convolutions) return run_cpu_convolutions(o);
    return run(o);
  } catch (const c10::Error& e) {
    std::cerr << "sdgen-bench: error: " << e.what_without_backtrace() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "sdgen-bench: error: " << e.what() << std::endl;
  }
  return 1;
}
