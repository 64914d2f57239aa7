// A generation run: the settings layered, the lines read, the model loaded
// once, then every entry (runner_entry.cpp).

#include "runner.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <iostream>
#include <sstream>

#include "default_model.h"
#include "formats/strings.h"
#include "line_sources.h"
#include "resources.h"
#include "sdgen/a1111.h"
#include "sdgen/device_info.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/inpaint.h"
#include "sdgen/interrupt.h"
#include "sdgen/rng.h"
#include "sdgen/runtime.h"
#include "sdgen/sha256.h"
#include "sdgen/torch_checkpoint.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

std::string one_line(std::string text) {
  for (auto& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

namespace {

std::string default_model_dir() {
  if (const char* env = std::getenv("SDGEN_DEFAULT_MODEL")) return env;
  return find_default_model();
}

torch::ScalarType torch_dtype(DtypeChoice choice, const torch::Device& device) {
  switch (choice) {
    case DtypeChoice::fp32:
      return torch::kFloat32;
    case DtypeChoice::fp16:
      return torch::kFloat16;
    case DtypeChoice::bf16:
      return torch::kBFloat16;
    case DtypeChoice::automatic:
      break;
  }
  return default_dtype(device);
}

}  // namespace

torch::Tensor read_init_image(const std::string& path) {
  auto pixels = read_png(path).pixels;
  if (pixels.size(2) == 4 || pixels.size(2) == 2)
    throw Error(path + ": the init image has an alpha channel; save it as RGB");
  if (pixels.size(0) < 8 || pixels.size(1) < 8)
    throw Error(path + ": the init image is " + std::to_string(pixels.size(1)) + "x" +
                std::to_string(pixels.size(0)) + " pixels, smaller than 8x8");
  if (pixels.size(2) == 1) pixels = pixels.repeat({1, 1, 3});
  return pixels;
}

torch::Tensor read_mask_image(const std::string& path) {
  const auto gray = mask_to_gray(read_png(path).pixels);
  if (gray.max().item<uint8_t>() < 128)
    throw Error(path +
                ": the mask is all black (nothing to repaint); white (>= 128 as gray) marks what "
                "to repaint, black what to keep");
  return gray;
}

void Runner::report(int code, const std::string& where, const std::string& message) {
  if (progress_) progress_->clear();
  std::cerr << "sdgen: error: " << where << one_line(message) << std::endl;
  if (first_error_code_ == kExitOk) first_error_code_ = code;
  if (run_.fail_fast) stop_ = true;
}

int Runner::entry_image_count(const PromptEntry* e) const {
  int batch = run_.batch_size;
  if (e)
    if (const auto* v = e->settings.find("batch_size")) batch = v->get<int>();
  const int per_job = only_pos_ >= 0 ? 1 : batch;
  return run_.batch_count * per_job;
}

// Lines to run. A regular file is read at once (so the total is known); "-"
// streams standard input.
void Runner::read_lines(std::unique_ptr<LineSource>& source, int64_t& total_images,
                        bool& need_model) {
  need_model = true;  // false when a prompt file has nothing to generate
  if (!file_mode_) {
    PromptLine single;
    single.kind = PromptLine::Kind::entry;
    single.entry.line = 0;
    source = std::make_unique<VectorSource>(std::vector<PromptLine>{single});
    total_images = entry_image_count(nullptr);
    return;
  }
  if (run_.prompt_file == "-") {
    source = std::make_unique<StdinSource>();
    total_images = -1;
    return;
  }
  auto lines = read_prompt_file(run_.prompt_file);
  total_images = 0;
  int64_t entry = 0;
  need_model = false;
  for (const auto& l : lines) {
    if (l.kind == PromptLine::Kind::skip) continue;
    if (in_shard(entry++, shard_)) {
      total_images += entry_image_count(l.kind == PromptLine::Kind::entry ? &l.entry : nullptr);
      if (l.kind == PromptLine::Kind::entry) need_model = true;
    }
  }
  if (entry == 0)
    throw CliError(kExitUsage, run_.prompt_file +
                                   ": no prompts in the prompt file (only blank lines and "
                                   "# comments)");
  source = std::make_unique<VectorSource>(std::move(lines));
}

// In the single-prompt case, fail on a bad output path before the model loads.
void Runner::check_output_before_load() {
  try {
    Job probe;
    probe.settings = run_;
    probe.request.prompt = run_.prompt;
    const int n = entry_image_count(nullptr);
    for (const auto& p : output_paths(probe, 0, n, 0, run_seed_, n)) check_output_path(p);
    if (!run_.init_image.empty()) read_init_image(run_.init_image);
    if (!run_.mask.empty()) {
      if (run_.init_image.empty())
        throw Error("--mask " + run_.mask + " needs --init-image: the image to repaint");
      read_mask_image(run_.mask);
    }
    if (run_.mask.empty() && run_.paste_back && cli_.has("paste_back"))
      throw Error("--paste-back needs --mask (and --init-image)");
  } catch (const Error& e) {
    throw CliError(kExitUsage, e.what());
  }
}

void Runner::load_model_and_pipeline() {
  LoadOptions load;
  model_path_ = load.model_path = run_.model.empty() ? default_model_dir() : run_.model;
  if (run_.model.empty() && !fs::exists(load.model_path))
    throw CliError(kExitModel, "no --model given and the default model " + load.model_path +
                                   " does not exist; run scripts/generate.sh once, or pass "
                                   "--model PATH");
  load.config_dir = run_.config_dir;
  load.tokenizer_path = run_.tokenizer;
  load.vae_path = run_.vae;
  load.prediction_type = to_string(run_.prediction);
  load.device = device_;
  load.dtype = dtype_;
  load.verbose = !run_.quiet;
  load.cuda_graphs = !run_.no_cuda_graphs;
  load.channels_last = run_.channels_last == ChannelsLast::on    ? 1
                       : run_.channels_last == ChannelsLast::off ? 0
                                                                 : -1;

  // Fail before loading when the weights (and, for a single prompt of known
  // size, its activations) cannot fit; prompt-file lines are checked each.
  if (!run_.no_memory_check) {
    MemoryRequest request = memory_request(request_from_settings(run_));
    request.img2img = !run_.init_image.empty();
    const bool known =
        !file_mode_ && (run_.init_image.empty() || (cli_.has("width") && cli_.has("height")));
    const std::string problem = memory_problem_before_load(load, known ? &request : nullptr);
    if (!problem.empty()) throw CliError(kExitGeneration, problem);
  }

  // The model hash (first 10 hex of the SHA-256) is computed while the model loads.
  auto hash = std::async(std::launch::async, [path = load.model_path]() {
    try {
      return model_sha256(path).substr(0, 10);
    } catch (const std::exception&) {
      return std::string();
    }
  });
  const auto t0 = Clock::now();
  try {
    model_ = std::make_unique<StableDiffusionModel>(load_model(load));
  } catch (const Error& e) {
    hash.wait();
    throw CliError(kExitModel, e.what());
  } catch (const c10::Error& e) {
    hash.wait();
    if (is_out_of_memory(e)) throw CliError(kExitGeneration, load_out_of_memory_text(load));
    throw CliError(kExitModel, e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    hash.wait();
    throw CliError(kExitGeneration, load_out_of_memory_text(load));
  }
  load_s_ = seconds(t0, Clock::now());
  // The model folder's layer: the guidance rescale it asks for, its native
  // size (diffusers' unet.config.sample_size * vae_scale_factor) and SDXL's
  // pipeline defaults.
  if (model_->default_guidance_rescale)
    model_layer_.set("guidance_rescale", *model_->default_guidance_rescale);
  // SDXL: diffusers' StableDiffusionXLPipeline defaults, the model's own
  // scheduler (Euler for SDXL base; its spacing from the scheduler config)
  // and guidance 5.0.
  if (model_->is_sdxl()) {
    if (const auto own = find_sampler(model_->scheduler_config.class_name))
      model_layer_.set("sampler", to_string(*own));
    model_layer_.set("cfg_scale", 5.0);
  }
  const int native = model_->unet->config().sample_size * model_->vae->downsample_factor();
  try {
    model_layer_.set_checked(setting("width"), native);
    model_layer_.set_checked(setting("height"), native);
  } catch (const SettingError&) {  // an odd config: the built-in 512 stays
    model_layer_.erase("width");
  }
  run_ = resolve_settings(layers());
  model_hash10_ = hash.get();
  model_name_ = a1111_model_name(load.model_path);
  if (!png_model_hash_.empty() && !model_hash10_.empty() && png_model_hash_ != model_hash10_ &&
      !run_.quiet)
    std::cerr << "sdgen: warning: " << run_.from_png << " was made with model " << png_model_name_
              << " (hash " << png_model_hash_ << "), this is " << model_name_ << " (hash "
              << model_hash10_ << "); the image will differ\n";
  identify_vae();
  pipeline_ = std::make_unique<Pipeline>(*model_);
  loras_ = std::make_unique<LoraLibrary>(*model_, run_.lora_dir, run_.quiet);
  load_embeddings();
  pipeline_->set_long_prompt(run_.long_prompt);
}

// Every embedding in --embeddings-dir and $SDGEN_EMBEDDINGS_DIR (A1111 loads
// its whole folder at start): files that do not fit this model, pickles and
// name clashes are skipped with one warning each kind.
void Runner::load_embeddings() {
  std::vector<std::string> dirs = run_.embeddings_dir;
  if (const char* env = std::getenv("SDGEN_EMBEDDINGS_DIR"))
    for (auto& dir : formats::split_path_list(env)) dirs.push_back(dir);
  std::vector<TextualInversion> loaded;
  std::vector<std::string> unfit, pickled;
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      if (!run_.quiet) std::cerr << "sdgen: warning: embeddings folder " << dir << " not found\n";
      continue;
    }
    std::vector<fs::path> files;
    for (auto it = fs::recursive_directory_iterator(
             dir, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file(ec)) files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      const std::string ext = f.extension().string();
      if (is_pickle_file_name(f.string())) {
        pickled.push_back(f.string());
        continue;
      }
      if (ext != ".safetensors") continue;
      const std::string name = f.stem().string();
      if (embedding_hashes_.count(name)) continue;  // the first of a name wins
      try {
        loaded.push_back(read_textual_inversion(f.string(), *model_));
        embedding_hashes_[name] = sha256_file_hex(f.string()).substr(0, 12);
      } catch (const Error& e) {
        unfit.push_back(e.what());
      }
    }
  }
  if (!run_.quiet) {
    for (const auto& why : unfit) std::cerr << "sdgen: warning: embedding skipped: " << why << "\n";
    if (!pickled.empty()) {
      std::string names;
      for (const auto& n : pickled)
        names += (names.empty() ? "" : ", ") + fs::path(n).filename().string();
      std::cerr << "sdgen: warning: pickled embeddings skipped (" << names
                << "): unpickling can run code; " << convert_command_hint(pickled.front())
                << (pickled.size() > 1 ? " (and likewise the others)" : "") << "\n";
    }
  }
  pipeline_->set_embeddings(std::move(loaded));
}

// A1111's "VAE hash" / "VAE" of --vae (the file's short SHA-256 and its name
// with the extension), and a warning when --from-png's PNG names another.
void Runner::identify_vae() {
  if (!model_->vae_file.empty()) {
    try {
      vae_hash10_ = model_sha256(model_->vae_file).substr(0, 10);
    } catch (const std::exception&) {
      vae_hash10_.clear();
    }
    fs::path p = fs::path(run_.vae).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    vae_name_ = p.filename().string();
  }
  if (png_vae_name_.empty() || run_.quiet) return;
  if (model_->vae_file.empty())
    std::cerr << "sdgen: warning: " << run_.from_png << " was made with VAE " << png_vae_name_
              << "; pass --vae FILE to use it\n";
  else if (!png_vae_hash_.empty() && !vae_hash10_.empty() && png_vae_hash_ != vae_hash10_)
    std::cerr << "sdgen: warning: " << run_.from_png << " was made with VAE " << png_vae_name_
              << " (hash " << png_vae_hash_ << "), this is " << vae_name_ << " (hash "
              << vae_hash10_ << "); the image will differ\n";
}

int Runner::run() {
  run_ = resolve_settings(layers());
  init_cpu_runtime(run_.threads);
  try {
    device_ = device_from_name(to_string(run_.device));
  } catch (const Error& e) {
    throw CliError(kExitUsage, e.what());
  }
  dtype_ = torch_dtype(run_.dtype, device_);
  if (!device_.is_cuda() && dtype_ == torch::kFloat16)
    throw CliError(kExitUsage, "--dtype fp16 is not supported on the CPU; use fp32 or bf16");
  if (!run_.from_png.empty()) {
    A1111Reading png = read_png_settings(run_.from_png, run_.quiet);
    png_layer_ = png.settings;
    only_pos_ = cli_.has("batch_size") ? -1 : png.batch_pos.value_or(-1);
    png_model_hash_ = png.model_hash.value_or("");
    png_model_name_ = png.model_name.value_or("");
    png_vae_hash_ = png.vae_hash.value_or("");
    png_vae_name_ = png.vae_name.value_or("");
    run_ = resolve_settings(layers());
    if (png_layer_.has("mask_blur") && (run_.init_image.empty() || run_.mask.empty()) &&
        !run_.quiet)
      std::cerr << "sdgen: warning: " << run_.from_png
                << " was made by inpainting (Mask blur); give --init-image and --mask again to "
                   "repeat it; without them sdgen makes "
                << (run_.init_image.empty() ? "a txt2img" : "an img2img") << " image\n";
    else if (png_layer_.has("strength") && run_.init_image.empty() && !run_.quiet)
      std::cerr << "sdgen: warning: " << run_.from_png
                << " was made with img2img (Denoising strength); without --init-image sdgen "
                   "makes a txt2img image\n";
  }
  if (!run_.shard.empty()) shard_ = parse_shard(run_.shard);
  if (run_.prompt_file.empty() && run_.prompt.empty() && run_.from_png.empty())
    throw CliError(kExitUsage, "no prompt: give -p TEXT, --prompt-file FILE or --from-png IMAGE");
  file_mode_ = !run_.prompt_file.empty();

  std::unique_ptr<LineSource> source;
  int64_t total_images = -1;
  bool need_model = true;
  read_lines(source, total_images, need_model);

  run_seed_ = run_.seed ? *run_.seed : random_seed();
  if (!run_.seed && !run_.quiet)
    std::cerr << "sdgen: seed " << run_seed_ << " (random; pass --seed to repeat)\n";
  if (!file_mode_) check_output_before_load();

  // A prompt file whose every line (in this shard) is bad has nothing to
  // generate: its lines are reported without loading the model.
  if (need_model) load_model_and_pipeline();
  progress_ = std::make_unique<Progress>(!run_.quiet, total_images);

  const auto t_run = Clock::now();
  PromptLine line;
  int64_t entry_index = 0, index_base = 0;
  while (!stop_ && !interrupted() && source->next(line)) {
    if (line.kind == PromptLine::Kind::skip) continue;
    const bool mine = in_shard(entry_index++, shard_);
    const int images =
        entry_image_count(line.kind == PromptLine::Kind::entry ? &line.entry : nullptr);
    if (mine) {
      if (line.kind == PromptLine::Kind::error) {
        ++bad_lines_;
        report(kExitUsage,
               (run_.prompt_file == "-" ? std::string("<stdin>") : run_.prompt_file) + " ",
               line.error);
        progress_->skip(images);
      } else {
        run_entry(line.entry, index_base, images);
      }
    }
    index_base += images;
  }
  progress_->clear();
  if (interrupted()) {
    std::cerr << interrupted_line(images_written_) << std::endl;
    return kExitInterrupted;
  }

  if (file_mode_ && !run_.quiet) {
    std::ostringstream s;
    s << "sdgen: done";
    if (!run_.shard.empty()) s << " (shard " << shard_.index << "/" << shard_.count << ")";
    s << " in " << std::fixed;
    s.precision(1);
    s << seconds(t_run, Clock::now()) << " s: " << images_written_ << " written, "
      << images_skipped_ << " skipped (already there), " << images_failed_ << " failed, "
      << bad_lines_ << " bad line" << (bad_lines_ == 1 ? "" : "s");
    if (stop_) s << "; stopped at the first error (--fail-fast)";
    std::cerr << s.str() << std::endl;
  }
  if (images_failed_ > 0) return kExitGeneration;
  if (bad_lines_ > 0) return kExitUsage;
  return first_error_code_;
}

int run_generation(const CommandLine& command_line) { return Runner(command_line).run(); }

}  // namespace sdgen::cli
