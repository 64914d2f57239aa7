#include "progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>

namespace sdgen::cli {
namespace {

std::string duration_text(double s) {
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600,
                  static_cast<int>(s) / 60 % 60);
  }
  return buf;
}

}  // namespace

Progress::Progress(bool enabled, int64_t total_images)
    : enabled_(enabled), tty_(::isatty(STDERR_FILENO) != 0), total_images_(total_images) {
  // Non-terminal output: one line per finished batch plus one every
  // SDGEN_PROGRESS_INTERVAL seconds (default 10) during long ones.
  if (const char* env = std::getenv("SDGEN_PROGRESS_INTERVAL")) interval_s_ = std::atof(env);
  last_print_ = Clock::now();
}

std::string Progress::overall() const {
  std::ostringstream s;
  if (total_images_ >= 0)
    s << done_images_ << "/" << total_images_ << " images";
  else
    s << done_images_ << " images";
  if (total_images_ > done_images_ && generated_images_ > 0) {
    const double per_image = generated_seconds_ / static_cast<double>(generated_images_);
    s << ", total ETA "
      << duration_text(per_image * static_cast<double>(total_images_ - done_images_));
  }
  return s.str();
}

void Progress::begin(const std::string& label, int steps, int images) {
  label_ = label;
  steps_ = steps;
  images_ = images;
  done_steps_ = 0;
  batch_start_ = Clock::now();
  draw(false);
}

void Progress::step(int done, int total) {
  done_steps_ = done;
  steps_ = total;
  draw(done == total);
}

void Progress::end(bool ok, double sampling_s) {
  const double s = std::chrono::duration<double>(Clock::now() - batch_start_).count();
  done_images_ += images_;
  generated_images_ += images_;
  generated_seconds_ += s;
  if (!enabled_) return;
  if (!ok) {
    clear();
    return;
  }
  if (tty_) clear();
  {  // one lasting line per batch, on a terminal too
    char rate[32];
    // it/s of the denoising loop alone when the library measured it.
    const double loop_s = sampling_s > 0 ? sampling_s : s;
    std::snprintf(rate, sizeof rate, "%.2f", loop_s > 0 ? done_steps_ / loop_s : 0.0);
    std::cerr << "sdgen: " << label_ << ": " << done_steps_ << " steps in " << duration_text(s)
              << " (" << rate << " it/s); " << overall() << std::endl;
    last_print_ = Clock::now();
  }
}

void Progress::skip(int images) { done_images_ += images; }

void Progress::clear() {
  if (enabled_ && tty_ && drawn_) {
    std::cerr << "\r\x1b[K" << std::flush;
    drawn_ = false;
  }
}

void Progress::draw(bool force) {
  if (!enabled_) return;
  const auto now = Clock::now();
  const double elapsed = std::chrono::duration<double>(now - batch_start_).count();
  const double rate = elapsed > 0 && done_steps_ > 0 ? done_steps_ / elapsed : 0;
  const double eta = rate > 0 ? (steps_ - done_steps_) / rate : 0;
  if (tty_) {
    // At most 10 redraws a second.
    if (!force && drawn_ && std::chrono::duration<double>(now - last_print_).count() < 0.1) return;
    last_print_ = now;
    const int width = 24;
    const int filled = steps_ > 0 ? width * done_steps_ / steps_ : 0;
    char rate_text[32];
    std::snprintf(rate_text, sizeof rate_text, "%.2f it/s", rate);
    std::cerr << "\r\x1b[K" << label_ << " [" << std::string(filled, '#')
              << std::string(width - filled, '-') << "] " << done_steps_ << "/" << steps_ << " "
              << rate_text << " ETA " << duration_text(eta) << " | " << overall() << std::flush;
    drawn_ = true;
    return;
  }
  if (!force && std::chrono::duration<double>(now - last_print_).count() >= interval_s_ &&
      done_steps_ < steps_) {
    char rate_text[32];
    std::snprintf(rate_text, sizeof rate_text, "%.2f", rate);
    std::cerr << "sdgen: " << label_ << ": step " << done_steps_ << "/" << steps_ << ", "
              << rate_text << " it/s, ETA " << duration_text(eta) << "; " << overall() << std::endl;
    last_print_ = now;
  }
}

}  // namespace sdgen::cli
