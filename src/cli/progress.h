#pragma once

// Progress on stderr: a redrawn bar when stderr is a terminal, plain lines at
// most every few seconds when it is not (logs, CI), nothing with --quiet.

#include <chrono>
#include <cstdint>
#include <string>

namespace sdgen::cli {

class Progress {
 public:
  // total_images < 0: unknown (prompts streamed from stdin).
  Progress(bool enabled, int64_t total_images);

  // A UNet batch of `images` images with `steps` steps starts; label names it.
  void begin(const std::string& label, int steps, int images);
  void step(int done, int total);  // `done` steps of `total` finished
  // The batch finished (ok: generated; else it failed and says nothing);
  // sampling_s: the library's time for the denoising loop, for the it/s.
  void end(bool ok = true, double sampling_s = -1);
  // Images skipped (--skip-existing) or given up count as done for the ETA.
  void skip(int images);
  // Clears the bar before other output to stderr.
  void clear();
  bool tty() const { return tty_; }

 private:
  using Clock = std::chrono::steady_clock;
  void draw(bool force);
  std::string overall() const;

  bool enabled_;
  bool tty_;
  int64_t total_images_;
  int64_t done_images_ = 0;
  int64_t generated_images_ = 0;  // with timing, for the ETA
  double generated_seconds_ = 0;
  std::string label_;
  int steps_ = 0, done_steps_ = 0, images_ = 0;
  Clock::time_point batch_start_, last_print_;
  bool drawn_ = false;
  double interval_s_ = 10;
};

}  // namespace sdgen::cli
