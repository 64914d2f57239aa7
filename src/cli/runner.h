#pragma once

// A generation run: one prompt (-p) or a prompt file (--prompt-file), with one
// model load for the whole run, output naming, --skip-existing, --shard,
// A1111 metadata, --from-png, progress and --json. runner.cpp has the run and
// the model load, runner_entry.cpp one prompt-file entry.

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "background_writer.h"
#include "loras.h"
#include "options.h"
#include "progress.h"
#include "sdgen/model.h"
#include "sdgen/output_pattern.h"
#include "sdgen/pipeline.h"
#include "sdgen/prompt_file.h"
#include "sdgen/settings.h"
#include "session.h"

namespace sdgen::cli {

using Clock = std::chrono::steady_clock;
inline double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// An RGB uint8 [H, W, 3] init image; throws Error naming the file.
torch::Tensor read_init_image(const std::string& path);
// An inpainting mask as gray uint8 [H, W] (RGB, RGBA, gray or gray + alpha
// PNGs, converted as PIL's convert("L")); throws Error naming the file, also
// when no pixel is white enough to repaint (>= 128).
torch::Tensor read_mask_image(const std::string& path);

// --max-batch when not given (0): images of one mixed-prompt UNet batch.
// The CPU's from docs/performance.md ("Mixed-prompt batching"); CUDA's is a
// cap, lowered by the memory estimate for large sizes.
inline constexpr int kCpuDefaultMaxBatch = 1;
inline constexpr int kCudaDefaultMaxBatch = 8;
// Images waiting for the writer thread at most (then generation waits):
// 48 MB of 1024x1024 pixels.
inline constexpr size_t kWriterQueueImages = 16;

class Runner {
 public:
  explicit Runner(const CommandLine& command_line) : cli_(command_line.layer) {}
  int run();

 private:
  // The layers in order: model folder <- --from-png <- command line <- `line`.
  std::vector<const SettingLayer*> layers(const SettingLayer* line = nullptr) const {
    return {&session_.model_layer, &png_layer_, &cli_, line};
  }
  void read_lines(std::unique_ptr<class LineSource>& source, int64_t& total_images,
                  bool& need_model);
  void check_output_before_load();
  void load_model_and_pipeline();
  Job make_job(const PromptEntry& e);
  std::vector<std::string> output_paths(const Job& job, int64_t index_base, int count, int line,
                                        uint64_t seed, int image_count) const;
  void run_entry(const PromptEntry& e, int64_t index_base, int entry_images);
  // One job of an entry (one seed of its batch count) with the images to
  // write: batch positions, image indices and output paths.
  struct PendingJob {
    Job job;
    int line = 0;
    std::string label;  // the progress label
    int images = 0;     // the job's images (progress)
    std::vector<int> positions;
    std::vector<int64_t> indices;
    std::vector<std::string> paths;
  };
  // runner_batch.cpp: jobs wait in pending_ while the next ones can join
  // their UNet batch (--max-batch); flush_pending generates and writes them.
  int max_batch_images() const;
  void enqueue(PendingJob pending);
  void flush_pending();
  void generate_pending(std::vector<PendingJob>& batch);
  void write_image(const Job& job, const GenerationResult& result, int pos, int64_t index, int line,
                   const std::string& path, double total_s);
  // Reports an error of `where` (after the images before it in file order are
  // written): one line on stderr, the run's exit code, --fail-fast.
  void report(int code, const std::string& where, const std::string& message);
  // The same from the writer thread, for an image it could not write.
  void report_written(int code, const std::string& where, const std::string& message);
  void wait_for_writes();
  std::string where(int line) const {
    if (run_.prompt_file.empty()) return "";
    return (run_.prompt_file == "-" ? std::string("<stdin>") : run_.prompt_file) + " line " +
           std::to_string(line) + ": ";
  }
  int entry_image_count(const PromptEntry* e) const;

  SettingLayer cli_;
  SettingLayer png_layer_{"--from-png"};
  Settings run_;  // the layers without a line: the run's own settings
  Shard shard_;
  uint64_t run_seed_ = 0;
  int only_pos_ = -1;  // --from-png of one image of a batch
  std::string png_model_hash_, png_model_name_, png_vae_hash_, png_vae_name_;
  ModelSession session_;  // the model, pipeline, LoRAs and embeddings (session.h)
  std::unique_ptr<Progress> progress_;
  std::map<std::string, int64_t> written_;  // output path -> image index, this run
  std::vector<PendingJob> pending_;         // in file order, sharing one UNet batch
  std::map<std::string, torch::Tensor> init_images_;
  std::map<std::string, torch::Tensor> masks_;
  // Written and failed images are counted on the writer thread too.
  std::atomic<int64_t> images_written_{0}, images_failed_{0};
  int64_t images_skipped_ = 0, bad_lines_ = 0;
  std::atomic<int> first_error_code_{kExitOk};
  std::atomic<bool> stop_{false};
  bool file_mode_ = false;
  std::mutex output_mutex_;  // a line at a time on stdout and stderr, from both threads
  // PNG encoding and writing, overlapping the next batch (declared last: it
  // finishes its queue before the members its tasks use go away).
  std::unique_ptr<BackgroundWriter> writer_;
};

}  // namespace sdgen::cli
