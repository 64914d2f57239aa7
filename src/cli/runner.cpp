// A generation run: the settings layered, the lines read, the model loaded
// once, then every entry (runner_entry.cpp).

#include "runner.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "line_sources.h"
#include "resources.h"
#include "sdgen/a1111.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/inpaint.h"
#include "sdgen/interrupt.h"
#include "sdgen/rng.h"
#include "sdgen/runtime.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

std::string one_line(std::string text) {
  for (auto& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

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
  // The jobs waiting for a batch, and the images being written, come before
  // this message in file order.
  flush_pending();
  wait_for_writes();
  if (progress_) progress_->clear();
  report_written(code, where, message);
}

void Runner::report_written(int code, const std::string& where, const std::string& message) {
  const std::string text = "sdgen: error: " + where + one_line(message) + "\n";
  std::lock_guard<std::mutex> lock(output_mutex_);
  std::cerr << text << std::flush;
  int none = kExitOk;
  first_error_code_.compare_exchange_strong(none, code);
  if (run_.fail_fast) stop_ = true;
}

void Runner::wait_for_writes() {
  if (writer_) writer_->wait_idle();
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
  // A single prompt of known size is checked for memory before the load;
  // prompt-file lines are checked each.
  MemoryRequest request = memory_request(request_from_settings(run_));
  request.img2img = !run_.init_image.empty();
  const bool known =
      !file_mode_ && (run_.init_image.empty() || (cli_.has("width") && cli_.has("height")));
  load_session(session_, run_, known ? &request : nullptr);
  run_ = resolve_settings(layers());
  const std::string& hash = session_.model_hash10;
  if (!png_model_hash_.empty() && !hash.empty() && png_model_hash_ != hash && !run_.quiet)
    std::cerr << "sdgen: warning: " << run_.from_png << " was made with model " << png_model_name_
              << " (hash " << png_model_hash_ << "), this is " << session_.model_name << " (hash "
              << hash << "); the image will differ\n";
  // A VAE the PNG names that this run does not use.
  if (png_vae_name_.empty() || run_.quiet) return;
  if (session_.model->vae_file.empty())
    std::cerr << "sdgen: warning: " << run_.from_png << " was made with VAE " << png_vae_name_
              << "; pass --vae FILE to use it\n";
  else if (!png_vae_hash_.empty() && !session_.vae_hash10.empty() &&
           png_vae_hash_ != session_.vae_hash10)
    std::cerr << "sdgen: warning: " << run_.from_png << " was made with VAE " << png_vae_name_
              << " (hash " << png_vae_hash_ << "), this is " << session_.vae_name << " (hash "
              << session_.vae_hash10 << "); the image will differ\n";
}

int Runner::run() {
  run_ = resolve_settings(layers());
  init_cpu_runtime(run_.threads);
  resolve_device(run_, session_.device, session_.dtype);
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
  flush_pending();
  wait_for_writes();  // every image generated is written, also after Ctrl-C
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
