#pragma once

// What the trainers of train.h (vae_trainer.cpp, trainer.cpp) share: the
// learning-rate schedule, bf16 autocast and the device guard.

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

namespace sdgen::train {

// Learning rate: linear warm-up, then cosine decay to 10% (per step).
inline double scheduled_lr(double base, int step, int warmup, int total) {
  if (step < warmup) return base * (step + 1) / warmup;
  const double progress = static_cast<double>(step - warmup) / std::max(1, total - warmup);
  return base * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress)));
}

inline void set_lr(torch::optim::AdamW& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
}

// Autocast to bf16 on the CPU or a CUDA device for the lifetime of the guard
// (thread-local in libtorch).
class AutocastBf16 {
 public:
  AutocastBf16(bool enabled, const torch::Device& device)
      : enabled_(enabled), cuda_(device.is_cuda()) {
    set(true);
  }
  ~AutocastBf16() {
    set(false);
    if (enabled_) at::autocast::clear_cache();
  }
  AutocastBf16(const AutocastBf16&) = delete;
  AutocastBf16& operator=(const AutocastBf16&) = delete;

 private:
  void set(bool on) const {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    const auto type = cuda_ ? at::kCUDA : at::kCPU;
    if (on) at::autocast::set_autocast_dtype(type, at::kBFloat16);
    at::autocast::set_autocast_enabled(type, on);
#else
    if (cuda_) {
      if (on) at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
      at::autocast::set_enabled(on);
    } else {
      if (on) at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
      at::autocast::set_cpu_enabled(on);
    }
#endif
  }
  bool enabled_;
  bool cuda_;
};

// Moves modules to a device for the lifetime of the guard, and back to the
// CPU (where callers write and evaluate them) at its end, also on a throw.
class OnDevice {
 public:
  OnDevice(std::vector<torch::nn::Module*> modules, const torch::Device& device)
      : modules_(std::move(modules)), moved_(!device.is_cpu()) {
    if (moved_)
      for (auto* m : modules_) m->to(device);
  }
  ~OnDevice() {
    if (moved_)
      for (auto* m : modules_) m->to(torch::kCPU);
  }
  OnDevice(const OnDevice&) = delete;
  OnDevice& operator=(const OnDevice&) = delete;

 private:
  std::vector<torch::nn::Module*> modules_;
  bool moved_;
};

}  // namespace sdgen::train
