// Generation runs: one prompt (-p) or a prompt file (--prompt-file), with one
// model load for the whole run, output naming, --skip-existing, --shard,
// A1111 metadata, --from-png, progress and --json.

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "default_model.h"
#include "options.h"
#include "progress.h"
#include "resources.h"
#include "sdgen/a1111.h"
#include "sdgen/device_info.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/interrupt.h"
#include "sdgen/model.h"
#include "sdgen/output_pattern.h"
#include "sdgen/pipeline.h"
#include "sdgen/prompt_file.h"
#include "sdgen/rng.h"
#include "sdgen/runtime.h"
#include "sdgen/schedulers/scheduler.h"
#include "sdgen/sha256.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

std::string one_line(std::string text) {
  for (auto& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string default_model_dir() {
  if (const char* env = std::getenv("SDGEN_DEFAULT_MODEL")) return env;
  return find_default_model();
}

torch::Device parse_device(const std::string& name) {
  try {
    return device_from_name(name);
  } catch (const Error& e) {
    throw CliError(kExitUsage, e.what());
  }
}

torch::ScalarType parse_dtype(const std::string& name, const torch::Device& device) {
  try {
    return sdgen::dtype_from_name(name, sdgen::default_dtype(device));
  } catch (const Error& e) {
    throw CliError(kExitUsage, std::string("--") + e.what());
  }
}

std::string canonical_sampler(const std::string& name) {
  return make_scheduler(name, SchedulerConfig{})->name();
}

// An RGB uint8 [H, W, 3] init image; throws Error naming the file.
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

// --from-png: the PNG's parameters fill every setting not given on the command line.
struct PngDefaults {
  int batch_pos = -1;
  bool guidance_rescale = false;  // the PNG settled it (absent there = 0, as A1111 reads it)
  std::string model_hash, model_name;
};

PngDefaults apply_png_parameters(Options& o) {
  PngImage png;
  try {
    png = read_png(o.from_png);
  } catch (const Error& e) {
    throw CliError(kExitUsage, std::string("--from-png: ") + e.what());
  }
  const std::string* text = nullptr;
  for (const auto& [key, value] : png.text)
    if (key == "parameters") text = &value;
  if (!text)
    throw CliError(kExitUsage,
                   o.from_png + ": no A1111 'parameters' text chunk to read settings from");
  const A1111Settings s = a1111_settings(parse_a1111_parameters(*text));
  if (!o.quiet)
    for (const auto& w : s.warnings)
      std::cerr << "sdgen: warning: " << o.from_png << ": " << w << "\n";
  auto take = [&o](const char* flag, auto& target, const auto& value) {
    if (value && !o.was_given(flag)) target = *value;
  };
  take("prompt", o.prompt, s.prompt);
  take("negative-prompt", o.negative_prompt, s.negative_prompt);
  take("steps", o.steps, s.steps);
  take("cfg-scale", o.cfg_scale, s.cfg_scale);
  if (s.seed && !o.was_given("seed")) o.seed = s.seed;
  take("width", o.width, s.width);
  take("height", o.height, s.height);
  take("sampler", o.sampler, s.sampler);
  take("clip-skip", o.clip_skip, s.clip_skip);
  take("batch-size", o.batch_size, s.batch_size);
  take("eta", o.eta, s.eta);
  take("strength", o.strength, s.strength);
  if (s.schedule && !o.was_given("scheduler")) o.schedule = *s.schedule;
  if (s.long_prompt_truncate && !o.was_given("long-prompt"))
    o.long_prompt = *s.long_prompt_truncate ? "truncate" : "chunks";
  PngDefaults d;
  if (s.batch_pos && !o.was_given("batch-size")) d.batch_pos = *s.batch_pos;
  if (!o.was_given("guidance-rescale")) {
    o.guidance_rescale = s.guidance_rescale.value_or(0.0);
    d.guidance_rescale = true;
  }
  if (s.model_hash) d.model_hash = *s.model_hash;
  if (s.model_name) d.model_name = *s.model_name;
  if (s.strength && o.init_image.empty() && !o.quiet)
    std::cerr << "sdgen: warning: " << o.from_png
              << " was made with img2img (Denoising strength); without --init-image sdgen "
                 "makes a txt2img image\n";
  return d;
}

// Where prompt-file lines come from: a whole file, standard input line by
// line (each line is generated as it arrives), or the single -p prompt.
class LineSource {
 public:
  virtual ~LineSource() = default;
  virtual bool next(PromptLine& line) = 0;
};

class VectorSource : public LineSource {
 public:
  explicit VectorSource(std::vector<PromptLine> lines) : lines_(std::move(lines)) {}
  bool next(PromptLine& line) override {
    if (pos_ >= lines_.size()) return false;
    line = lines_[pos_++];
    return true;
  }

 private:
  std::vector<PromptLine> lines_;
  size_t pos_ = 0;
};

class StdinSource : public LineSource {
 public:
  bool next(PromptLine& line) override {
    std::string text;
    if (!std::getline(std::cin, text)) return false;
    line = parse_prompt_line(text, ++number_);
    return true;
  }

 private:
  int number_ = 0;
};

// One prompt-file entry turned into a request (seed of its first image).
struct Job {
  GenerationRequest request;
  std::string sampler;  // canonical
  std::string output_pattern;
  bool pattern_from_entry = false;
  std::string init_image_path;
};

class Runner {
 public:
  explicit Runner(Options o) : o_(std::move(o)) {}
  int run();

 private:
  void check_options();
  void load_model_and_pipeline();
  Job make_job(const PromptEntry& e);
  std::vector<std::string> output_paths(const Job& job, int64_t index_base, int count, int line,
                                        uint64_t seed, int image_count) const;
  void run_entry(const PromptEntry& e, int64_t index_base, int entry_images);
  void report(int code, const std::string& where, const std::string& message);
  std::string where(int line) const {
    if (o_.prompt_file.empty()) return "";
    return (o_.prompt_file == "-" ? std::string("<stdin>") : o_.prompt_file) + " line " +
           std::to_string(line) + ": ";
  }
  int entry_image_count(const PromptEntry* e) const {
    const int batch = e && e->batch_size ? *e->batch_size : o_.batch_size;
    const int per_job = only_pos_ >= 0 ? 1 : batch;
    return o_.batch_count * per_job;
  }

  Options o_;
  torch::Device device_ = torch::kCPU;
  torch::ScalarType dtype_ = torch::kFloat32;
  Shard shard_;
  uint64_t run_seed_ = 0;
  int only_pos_ = -1;  // --from-png of one image of a batch
  PngDefaults png_;
  std::unique_ptr<StableDiffusionModel> model_;
  std::unique_ptr<Pipeline> pipeline_;
  std::unique_ptr<Progress> progress_;
  std::string model_path_, model_hash10_, model_name_;
  double load_s_ = 0;
  std::map<std::string, int64_t> written_;  // output path -> image index, this run
  std::map<std::string, torch::Tensor> init_images_;
  int64_t images_written_ = 0, images_skipped_ = 0, images_failed_ = 0, bad_lines_ = 0;
  int first_error_code_ = kExitOk;
  bool stop_ = false;
  bool file_mode_ = false;
};

void Runner::report(int code, const std::string& where, const std::string& message) {
  if (progress_) progress_->clear();
  std::cerr << "sdgen: error: " << where << one_line(message) << std::endl;
  if (first_error_code_ == kExitOk) first_error_code_ = code;
  if (o_.fail_fast) stop_ = true;
}

// Settings that need no model; every failure is a usage error.
void Runner::check_options() {
  auto usage = [](const std::string& m) { return CliError(kExitUsage, m); };
  // "--name value", naming the PNG when --from-png filled the value in (the
  // defaults are valid, so a bad value not given on the command line is its).
  auto flag = [this](const std::string& name, const auto& value) {
    std::ostringstream s;
    s << "--" << name << " " << value;
    if (!o_.from_png.empty() && !o_.was_given(name)) s << " (from " << o_.from_png << ")";
    return s.str();
  };
  for (auto [name, v] : {std::pair<const char*, int>{"width", o_.width}, {"height", o_.height}})
    if (v <= 0 || v % 8 != 0 || v > 8192)
      throw usage(flag(name, v) + ": must be a positive multiple of 8, at most 8192");
  if (o_.steps < 1 || o_.steps > 1000)
    throw usage(flag("steps", o_.steps) + ": must be between 1 and 1000");
  if (!(o_.cfg_scale >= 0) || o_.cfg_scale > 1000)
    throw usage(flag("cfg-scale", o_.cfg_scale) + ": must be >= 0 (and at most 1000)");
  if (o_.batch_size < 1 || o_.batch_size > 64)
    throw usage(flag("batch-size", o_.batch_size) + ": must be 1 to 64");
  if (o_.batch_count < 1 || o_.batch_count > 100000)
    throw usage(flag("batch-count", o_.batch_count) + ": must be 1 to 100000");
  if (o_.clip_skip < 1) throw usage(flag("clip-skip", o_.clip_skip) + ": must be >= 1");
  if (!(o_.strength > 0) || o_.strength > 1)
    throw usage(flag("strength", o_.strength) + ": must be in (0, 1]");
  if (!(o_.eta >= 0) || o_.eta > 1) throw usage(flag("eta", o_.eta) + ": must be between 0 and 1");
  if (!(o_.guidance_rescale >= 0) || o_.guidance_rescale > 1)
    throw usage(flag("guidance-rescale", o_.guidance_rescale) + ": must be between 0 and 1");
  if (!o_.prediction.empty() && o_.prediction != "epsilon" && o_.prediction != "eps" &&
      o_.prediction != "v" && o_.prediction != "v_prediction" && o_.prediction != "v-prediction")
    throw usage("--prediction " + o_.prediction + ": expected epsilon or v");
  if (o_.schedule != "" && o_.schedule != "karras" && o_.schedule != "normal")
    throw usage("--scheduler " + o_.schedule + ": expected karras or normal");
  if (o_.long_prompt != "chunks" && o_.long_prompt != "truncate")
    throw usage("--long-prompt " + o_.long_prompt + ": expected chunks or truncate");
  if (o_.channels_last != "auto" && o_.channels_last != "on" && o_.channels_last != "off")
    throw usage("--channels-last " + o_.channels_last + ": expected on, off or auto");
  if (!o_.shard.empty()) {
    try {
      shard_ = parse_shard(o_.shard);
    } catch (const Error& e) {
      throw usage(e.what());
    }
  }
  try {
    canonical_sampler(o_.sampler);
  } catch (const Error& e) {
    throw usage(flag("sampler", o_.sampler) + ": " + e.what());
  }
  try {
    expand_output_pattern(o_.output, OutputFields{});
  } catch (const Error& e) {
    throw usage(std::string("--output: ") + e.what());
  }
  if (o_.prompt_file.empty() && o_.prompt.empty() && o_.from_png.empty())
    throw usage("no prompt: give -p TEXT, --prompt-file FILE or --from-png IMAGE");
}

Job Runner::make_job(const PromptEntry& e) {
  Job job;
  GenerationRequest& r = job.request;
  if (e.prompt) {
    r.prompt = *e.prompt;
  } else if (!o_.prompt.empty()) {
    r.prompt = o_.prompt;
  } else {
    throw Error("no \"prompt\" in the line and no --prompt to fall back on");
  }
  r.negative_prompt = e.negative_prompt.value_or(o_.negative_prompt);
  r.steps = e.steps.value_or(o_.steps);
  r.cfg_scale = e.cfg_scale.value_or(o_.cfg_scale);
  r.guidance_rescale = e.guidance_rescale.value_or(o_.guidance_rescale);
  r.width = e.width.value_or(o_.width);
  r.height = e.height.value_or(o_.height);
  r.batch_size = e.batch_size.value_or(o_.batch_size);
  r.clip_skip = e.clip_skip.value_or(o_.clip_skip);
  r.schedule = e.scheduler.value_or(o_.schedule);
  r.strength = e.strength.value_or(o_.strength);
  r.eta = o_.eta;
  r.vae_tiling = o_.vae_tiling;
  r.sampler = e.sampler.value_or(o_.sampler);
  job.sampler = canonical_sampler(r.sampler);
  r.seed = e.seed.value_or(run_seed_);
  job.output_pattern = e.output.value_or(o_.output);
  job.pattern_from_entry = e.output.has_value();
  expand_output_pattern(job.output_pattern, OutputFields{});

  job.init_image_path = e.init_image.value_or(o_.init_image);
  if (!job.init_image_path.empty()) {
    auto it = init_images_.find(job.init_image_path);
    if (it == init_images_.end()) {
      if (init_images_.size() > 8) init_images_.clear();  // bounded cache
      it = init_images_.emplace(job.init_image_path, read_init_image(job.init_image_path)).first;
    }
    r.init_image = it->second;
    // The image's own size (down to a multiple of 8) unless a size was given.
    const bool size_given = e.width || e.height || o_.was_given("width") || o_.was_given("height");
    const int h = static_cast<int>(r.init_image.size(0)),
              w = static_cast<int>(r.init_image.size(1));
    if (!size_given) {
      r.width = w / 8 * 8;
      r.height = h / 8 * 8;
      if (r.width == 0 || r.height == 0)
        throw Error(job.init_image_path + ": the init image is smaller than 8x8 pixels");
    }
    if ((r.width != w || r.height != h) && !o_.quiet) {
      if (progress_) progress_->clear();
      std::cerr << "sdgen: resizing the init image from " << w << "x" << h << " to " << r.width
                << "x" << r.height << "\n";
    }
  }
  pipeline_->validate(r);
  pipeline_->make_request_scheduler(r);  // sampler/eta combinations
  return job;
}

std::vector<std::string> Runner::output_paths(const Job& job, int64_t index_base, int count,
                                              int line, uint64_t seed, int image_count) const {
  // A pattern without fields names one image; several get "-<index>".
  const bool numbered = !output_pattern_has_fields(job.output_pattern) &&
                        (job.pattern_from_entry ? image_count > 1 : file_mode_ || image_count > 1);
  std::vector<std::string> paths;
  for (int k = 0; k < count; ++k) {
    OutputFields f;
    f.index = index_base + k;
    f.seed = seed;
    f.prompt = job.request.prompt;
    f.line = line;
    std::string path = expand_output_pattern(job.output_pattern, f);
    if (numbered) path = with_index_suffix(path, f.index);
    paths.push_back(path);
  }
  return paths;
}

void Runner::run_entry(const PromptEntry& e, int64_t index_base, int entry_images) {
  const std::string at = where(e.line);
  Job job;
  try {
    job = make_job(e);
  } catch (const Error& err) {
    ++bad_lines_;
    report(kExitUsage, at, err.what());
    progress_->skip(entry_images);
    return;
  } catch (const c10::Error& err) {
    ++bad_lines_;
    report(kExitUsage, at, err.what_without_backtrace());
    progress_->skip(entry_images);
    return;
  }
  GenerationRequest& r = job.request;
  std::vector<int> positions;
  if (only_pos_ >= 0) {
    if (only_pos_ >= r.batch_size) {
      ++bad_lines_;
      report(kExitUsage, at,
             "Batch pos " + std::to_string(only_pos_) + " is outside the batch of " +
                 std::to_string(r.batch_size));
      return;
    }
    positions.push_back(only_pos_);
  } else {
    for (int b = 0; b < r.batch_size; ++b) positions.push_back(b);
  }
  const int per_job = static_cast<int>(positions.size());
  const uint64_t base_seed = r.seed;

  // All names first: a pattern that gives two images one file is an error
  // before any work.
  std::vector<std::vector<std::string>> paths;
  for (int j = 0; j < o_.batch_count; ++j) {
    const uint64_t seed = base_seed + static_cast<uint64_t>(j);
    paths.push_back(
        output_paths(job, index_base + int64_t(j) * per_job, per_job, e.line, seed, entry_images));
  }
  for (int j = 0; j < o_.batch_count; ++j)
    for (int k = 0; k < per_job; ++k) {
      const std::string& p = paths[j][k];
      const int64_t index = index_base + int64_t(j) * per_job + k;
      auto [it, inserted] = written_.emplace(p, index);
      if (!inserted) {
        ++bad_lines_;
        report(kExitUsage, at,
               "-o " + job.output_pattern + " names image " + std::to_string(index) + " " + p +
                   ", the same file as image " + std::to_string(it->second) +
                   "; put {index} or {seed} in the pattern");
        progress_->skip(entry_images);
        return;
      }
    }

  // Memory for this size and batch, before any allocation (resources.cpp).
  if (!o_.no_memory_check) {
    const int chunks = std::max(pipeline_->prompt_chunk_count(r.prompt),
                                pipeline_->prompt_chunk_count(r.negative_prompt));
    const std::string problem = memory_problem(*model_, memory_request(r, chunks));
    if (!problem.empty()) {
      images_failed_ += entry_images;
      report(kExitGeneration, at, problem);
      progress_->skip(entry_images);
      return;
    }
  }

  for (int j = 0; j < o_.batch_count && !stop_; ++j) {
    r.seed = base_seed + static_cast<uint64_t>(j);
    std::vector<int> todo;  // indices into positions
    for (int k = 0; k < per_job; ++k)
      if (!o_.skip_existing || !fs::exists(paths[j][k])) todo.push_back(k);
    if (todo.empty()) {
      images_skipped_ += per_job;
      progress_->skip(per_job);
      continue;
    }
    images_skipped_ += per_job - static_cast<int>(todo.size());
    try {
      for (int k : todo) check_output_path(paths[j][k]);
    } catch (const Error& err) {
      images_failed_ += per_job;
      report(kExitGeneration, at, err.what());
      progress_->skip(per_job);
      continue;
    }

    if (interrupted()) {  // Ctrl-C while the previous image was written
      stop_ = true;
      break;
    }
    std::string label = file_mode_ ? "line " + std::to_string(e.line) : std::string("sdgen");
    if (o_.batch_count > 1)
      label += " (" + std::to_string(j + 1) + "/" + std::to_string(o_.batch_count) + ")";
    progress_->begin(label + " seed " + std::to_string(r.seed), r.steps, per_job);
    const auto t0 = Clock::now();
    GenerationResult result;
    try {
      Progress* progress = progress_.get();
      result = pipeline_->generate(r, [progress](const StepInfo& info, const torch::Tensor&) {
        progress->step(info.index + 1, info.total);
        throw_if_interrupted();  // abandons the image at this step boundary
      });
    } catch (const Interrupted&) {
      progress_->end(false);
      stop_ = true;
      break;
    } catch (const std::exception& err) {
      images_failed_ += static_cast<int64_t>(todo.size());
      progress_->end(false);
      // Out of memory: one line with the estimate and what to try.
      report(kExitGeneration, at, generation_error_text(err, *model_, memory_request(r)));
      continue;
    }
    const double total_s = seconds(t0, Clock::now());
    progress_->end(true, result.timings.sampling_s);

    for (int k : todo) {
      const std::string& path = paths[j][k];
      const int pos = positions[k];
      ImageMetadata meta;
      meta.sampler = job.sampler;
      meta.model_hash = model_hash10_;
      meta.model_name = model_name_;
      meta.batch_pos = pos;
      meta.long_prompt_truncate = o_.long_prompt == "truncate";
      const std::string params = format_a1111_parameters(a1111_parameters_for(r, meta));
      try {
        write_png(path, result.images_u8[pos], {{"parameters", params}});
      } catch (const Error& err) {
        ++images_failed_;
        report(kExitGeneration, at, err.what());
        continue;
      }
      ++images_written_;
      if (o_.json) {
        const auto& t = result.timings;
        nlohmann::json out = {
            {"path", path},
            {"index", index_base + int64_t(j) * per_job + k},
            {"line", e.line},
            {"seed", r.seed},
            {"batch_pos", pos},
            {"prompt", r.prompt},
            {"negative_prompt", r.negative_prompt},
            {"steps", r.steps},
            {"cfg_scale", r.cfg_scale},
            {"guidance_rescale", r.guidance_rescale},
            {"width", r.width},
            {"height", r.height},
            {"sampler", job.sampler},
            {"scheduler", r.schedule},
            {"clip_skip", r.clip_skip},
            {"batch_size", r.batch_size},
            {"eta", r.eta},
            {"init_image", job.init_image_path.empty() ? nlohmann::json(nullptr)
                                                       : nlohmann::json(job.init_image_path)},
            {"strength",
             r.init_image.defined() ? nlohmann::json(r.strength) : nlohmann::json(nullptr)},
            {"long_prompt", o_.long_prompt},
            {"model", model_path_},
            {"model_hash", model_hash10_},
            {"device", device_.str()},
            {"dtype", std::string(c10::toString(dtype_))},
            {"timings",
             {{"load_s", load_s_},
              {"text_s", t.text_s},
              {"sampling_s", t.sampling_s},
              {"decode_s", t.decode_s},
              {"total_s", total_s},
              {"steps", t.steps},
              {"it_per_s", t.sampling_s > 0 ? t.steps / t.sampling_s : 0.0}}}};
        std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                  << std::endl;
      } else {
        std::cout << "wrote " << path << " (seed " << r.seed << ")" << std::endl;
      }
    }
  }
}

void Runner::load_model_and_pipeline() {
  LoadOptions load;
  model_path_ = load.model_path = o_.model.empty() ? default_model_dir() : o_.model;
  if (o_.model.empty() && !fs::exists(load.model_path))
    throw CliError(kExitModel, "no --model given and the default model " + load.model_path +
                                   " does not exist; run scripts/generate.sh once, or pass "
                                   "--model PATH");
  load.config_dir = o_.config_dir;
  load.tokenizer_path = o_.tokenizer;
  load.prediction_type = o_.prediction;
  load.device = device_;
  load.dtype = dtype_;
  load.verbose = !o_.quiet;
  load.cuda_graphs = !o_.no_cuda_graphs;
  load.channels_last = o_.channels_last == "on" ? 1 : o_.channels_last == "off" ? 0 : -1;

  // Fail before loading when the weights (and, for a single prompt of known
  // size, its activations) cannot fit; prompt-file lines are checked each.
  if (!o_.no_memory_check) {
    MemoryRequest request;
    request.width = o_.width;
    request.height = o_.height;
    request.batch_size = o_.batch_size;
    request.guided = o_.cfg_scale > 1.0;
    request.vae_tiling = o_.vae_tiling;
    request.img2img = !o_.init_image.empty();
    const bool known =
        !file_mode_ && (o_.init_image.empty() || (o_.was_given("width") && o_.was_given("height")));
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
  if (model_->default_guidance_rescale && !o_.was_given("guidance-rescale") &&
      !png_.guidance_rescale)
    o_.guidance_rescale = *model_->default_guidance_rescale;
  model_hash10_ = hash.get();
  model_name_ = a1111_model_name(load.model_path);
  if (!png_.model_hash.empty() && !model_hash10_.empty() && png_.model_hash != model_hash10_ &&
      !o_.quiet)
    std::cerr << "sdgen: warning: " << o_.from_png << " was made with model " << png_.model_name
              << " (hash " << png_.model_hash << "), this is " << model_name_ << " (hash "
              << model_hash10_ << "); the image will differ\n";
  pipeline_ = std::make_unique<Pipeline>(*model_);
  pipeline_->set_long_prompt(o_.long_prompt == "truncate" ? Pipeline::LongPrompt::truncate
                                                          : Pipeline::LongPrompt::chunks);
}

int Runner::run() {
  init_cpu_runtime(o_.threads);
  device_ = parse_device(o_.device);
  dtype_ = parse_dtype(o_.dtype, device_);
  if (!device_.is_cuda() && dtype_ == torch::kFloat16)
    throw CliError(kExitUsage, "--dtype fp16 is not supported on the CPU; use fp32 or bf16");
  if (!o_.from_png.empty()) {
    png_ = apply_png_parameters(o_);
    only_pos_ = png_.batch_pos;
  }
  check_options();
  file_mode_ = !o_.prompt_file.empty();

  // Lines to run. A regular file is read at once (so the total is known);
  // "-" streams standard input.
  std::unique_ptr<LineSource> source;
  int64_t total_images = -1;
  bool need_model = true;  // false when a prompt file has nothing to generate
  if (!file_mode_) {
    PromptLine single;
    single.kind = PromptLine::Kind::entry;
    single.entry.line = 0;
    source = std::make_unique<VectorSource>(std::vector<PromptLine>{single});
    total_images = entry_image_count(nullptr);
  } else if (o_.prompt_file == "-") {
    source = std::make_unique<StdinSource>();
  } else {
    std::error_code ec;
    if (fs::is_directory(o_.prompt_file, ec))
      throw CliError(kExitUsage, o_.prompt_file + ": the prompt file is a folder");
    std::ifstream in(o_.prompt_file, std::ios::binary);
    if (!in)
      throw CliError(kExitUsage,
                     o_.prompt_file + ": cannot read the prompt file: " + std::strerror(errno));
    std::stringstream text;
    text << in.rdbuf();
    if (in.bad()) throw CliError(kExitUsage, o_.prompt_file + ": cannot read the prompt file");
    auto lines = parse_prompt_text(text.str());
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
      throw CliError(kExitUsage, o_.prompt_file +
                                     ": no prompts in the prompt file (only blank lines and "
                                     "# comments)");
    source = std::make_unique<VectorSource>(std::move(lines));
  }

  run_seed_ = o_.seed ? *o_.seed : random_seed();
  if (!o_.seed && !o_.quiet)
    std::cerr << "sdgen: seed " << run_seed_ << " (random; pass --seed to repeat)\n";

  // In the single-prompt case, fail on a bad output path before the model loads.
  if (!file_mode_) {
    try {
      Job probe;
      probe.request.prompt = o_.prompt;
      probe.output_pattern = o_.output;
      const int n = entry_image_count(nullptr);
      for (const auto& p : output_paths(probe, 0, n, 0, run_seed_, n)) check_output_path(p);
      if (!o_.init_image.empty()) read_init_image(o_.init_image);
    } catch (const Error& e) {
      throw CliError(kExitUsage, e.what());
    }
  }

  // A prompt file whose every line (in this shard) is bad has nothing to
  // generate: its lines are reported without loading the model.
  if (need_model) load_model_and_pipeline();
  progress_ = std::make_unique<Progress>(!o_.quiet, total_images);

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
        report(kExitUsage, (o_.prompt_file == "-" ? std::string("<stdin>") : o_.prompt_file) + " ",
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

  if (file_mode_ && !o_.quiet) {
    std::ostringstream s;
    s << "sdgen: done";
    if (!o_.shard.empty()) s << " (shard " << shard_.index << "/" << shard_.count << ")";
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

}  // namespace

int run_generation(Options options) { return Runner(std::move(options)).run(); }

}  // namespace sdgen::cli
