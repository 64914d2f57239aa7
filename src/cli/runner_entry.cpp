// One prompt-file entry of a run: its settings (the layers and the line), its
// output names, the generation and the PNGs with their A1111 parameters.

#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>

#include "resources.h"
#include "runner.h"
#include "sdgen/a1111.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/interrupt.h"
#include "sdgen/runtime.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

Job Runner::make_job(const PromptEntry& e) {
  Job job;
  const auto all = layers(&e.settings);
  job.settings = resolve_settings(all);
  Settings& s = job.settings;
  if (!e.settings.has("prompt") && s.prompt.empty())
    throw Error("no \"prompt\" in the line and no --prompt to fall back on");
  if (!s.seed) s.seed = run_seed_;
  job.pattern_from_entry = e.settings.has("output");
  GenerationRequest& r = job.request;
  r = request_from_settings(s);

  if (!s.init_image.empty()) {
    auto it = init_images_.find(s.init_image);
    if (it == init_images_.end()) {
      if (init_images_.size() > 8) init_images_.clear();  // bounded cache
      it = init_images_.emplace(s.init_image, read_init_image(s.init_image)).first;
    }
    r.init_image = it->second;
    // The image's own size (down to a multiple of 8) unless the command line or
    // the line gives a size.
    const bool size_given = e.settings.has("width") || e.settings.has("height") ||
                            cli_.has("width") || cli_.has("height");
    const int h = static_cast<int>(r.init_image.size(0)),
              w = static_cast<int>(r.init_image.size(1));
    if (!size_given) {
      r.width = w / 8 * 8;
      r.height = h / 8 * 8;
      if (r.width == 0 || r.height == 0)
        throw Error(s.init_image + ": the init image is smaller than 8x8 pixels");
    }
    if ((r.width != w || r.height != h) && !run_.quiet) {
      if (progress_) progress_->clear();
      std::cerr << "sdgen: resizing the init image from " << w << "x" << h << " to " << r.width
                << "x" << r.height << "\n";
    }
    s.width = r.width;
    s.height = r.height;
  }
  if (!s.mask.empty()) {
    if (s.init_image.empty())
      throw Error("mask " + s.mask +
                  " needs an init image (--init-image or \"init_image\"): the "
                  "image to repaint");
    auto it = masks_.find(s.mask);
    if (it == masks_.end()) {
      if (masks_.size() > 8) masks_.clear();  // bounded cache
      it = masks_.emplace(s.mask, read_mask_image(s.mask)).first;
    }
    r.mask = it->second;
    // diffusers' inpainting default: the whole schedule, unless a layer sets one.
    if (!setting_source(all, "strength")) s.strength = r.strength = 1.0;
  } else if (s.paste_back) {
    // From a PNG given without its mask: that warning said it; no paste-back.
    if (setting_source(all, "paste_back") != &png_layer_)
      throw Error("--paste-back needs --mask (and --init-image)");
    s.paste_back = r.paste_back = false;
  }
  prepare_job(session_, job);
  return job;
}

std::vector<std::string> Runner::output_paths(const Job& job, int64_t index_base, int count,
                                              int line, uint64_t seed, int image_count) const {
  // A pattern without fields names one image; several get "-<index>".
  const std::string& pattern = job.settings.output;
  const bool numbered = !output_pattern_has_fields(pattern) &&
                        (job.pattern_from_entry ? image_count > 1 : file_mode_ || image_count > 1);
  std::vector<std::string> paths;
  for (int k = 0; k < count; ++k) {
    OutputFields f;
    f.index = index_base + k;
    f.seed = seed;
    f.prompt = job.request.prompt;
    f.line = line;
    std::string path = expand_output_pattern(pattern, f);
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
  const int batch_count = run_.batch_count;

  // All names first: a pattern that gives two images one file is an error
  // before any work.
  std::vector<std::vector<std::string>> paths;
  for (int j = 0; j < batch_count; ++j) {
    const uint64_t seed = base_seed + static_cast<uint64_t>(j);
    paths.push_back(
        output_paths(job, index_base + int64_t(j) * per_job, per_job, e.line, seed, entry_images));
  }
  for (int j = 0; j < batch_count; ++j)
    for (int k = 0; k < per_job; ++k) {
      const std::string& p = paths[j][k];
      const int64_t index = index_base + int64_t(j) * per_job + k;
      auto [it, inserted] = written_.emplace(p, index);
      if (!inserted) {
        ++bad_lines_;
        report(kExitUsage, at,
               "-o " + job.settings.output + " names image " + std::to_string(index) + " " + p +
                   ", the same file as image " + std::to_string(it->second) +
                   "; put {index} or {seed} in the pattern");
        progress_->skip(entry_images);
        return;
      }
    }

  // Memory for this size and batch, before any allocation (resources.cpp).
  if (!run_.no_memory_check) {
    const std::string problem = job_memory_problem(session_, job);
    if (!problem.empty()) {
      images_failed_ += entry_images;
      report(kExitGeneration, at, problem);
      progress_->skip(entry_images);
      return;
    }
  }

  for (int j = 0; j < batch_count && !stop_; ++j) {
    r.seed = base_seed + static_cast<uint64_t>(j);
    job.settings.seed = r.seed;
    std::vector<int> todo;  // indices into positions
    for (int k = 0; k < per_job; ++k)
      if (!run_.skip_existing || !fs::exists(paths[j][k])) todo.push_back(k);
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
    PendingJob pending;
    pending.job = job;
    pending.line = e.line;
    pending.label = file_mode_ ? "line " + std::to_string(e.line) : std::string("sdgen");
    if (batch_count > 1)
      pending.label += " (" + std::to_string(j + 1) + "/" + std::to_string(batch_count) + ")";
    pending.label += " seed " + std::to_string(r.seed);
    pending.images = per_job;
    for (int k : todo) {
      pending.positions.push_back(positions[k]);
      pending.indices.push_back(index_base + int64_t(j) * per_job + k);
      pending.paths.push_back(paths[j][k]);
    }
    // Generated at once, or with the next compatible jobs (runner_batch.cpp).
    enqueue(std::move(pending));
  }
}

void Runner::write_image(const Job& job, const GenerationResult& result, int pos, int64_t index,
                         int line, const std::string& path, double total_s) {
  // What the image's PNG and output line say is taken here, from the run's
  // state now; the PNG is encoded and written, and the line printed, on the
  // writer thread while the next batch samples.
  std::string params = image_parameters(session_, job, pos);
  std::string text;
  if (!run_.json) {
    text = "wrote " + path + " (seed " + std::to_string(job.request.seed) + ")";
  } else {
    // The settings table's --json fields, then what only the run knows.
    Settings shown = job.settings;
    shown.model = session_.model_path;
    nlohmann::json out = settings_json(shown);
    const auto& t = result.timings;
    out["path"] = path;
    out["index"] = index;
    out["line"] = line;
    out["batch_pos"] = pos;
    out["model_hash"] = session_.model_hash10;
    out["device"] = session_.device.str();
    out["dtype"] = std::string(c10::toString(session_.dtype));
    nlohmann::json loras = nlohmann::json::array();
    for (const auto& l : job.loras)
      loras.push_back({{"name", l.name},
                       {"path", l.file->path},
                       {"hash", l.hash},
                       {"te_weight", l.te_weight},
                       {"unet_weight", l.unet_weight}});
    out["loras"] = loras;
    out["timings"] = {{"load_s", session_.load_s},
                      {"text_s", t.text_s},
                      {"sampling_s", t.sampling_s},
                      {"decode_s", t.decode_s},
                      {"total_s", total_s},
                      {"lora_merge_s", session_.loras->last_merge_seconds()},
                      {"steps", t.steps},
                      {"it_per_s", t.sampling_s > 0 ? t.steps / t.sampling_s : 0.0}};
    text = out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  if (!writer_) writer_ = std::make_unique<BackgroundWriter>(kWriterQueueImages);
  writer_->submit([this, image = result.images_u8[pos], path, params = std::move(params),
                   text = std::move(text), at = where(line)] {
    try {
      write_png(path, image, {{"parameters", params}});
    } catch (const std::exception& err) {
      ++images_failed_;
      report_written(kExitGeneration, at, err.what());
      return;
    }
    ++images_written_;
    std::lock_guard<std::mutex> lock(output_mutex_);
    std::cout << text << std::endl;
  });
}

}  // namespace sdgen::cli
