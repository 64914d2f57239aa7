// The memory-check half of memory_estimate.h: what memory is available, the
// one-line messages of a request that does not fit or that ran out of
// memory anyway, and giving cached CUDA memory back.

#include "sdgen/memory_estimate.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "sdgen/runtime.h"

#ifdef SDGEN_WITH_CUDA
#include "cuda/cuda_info.h"
#endif

namespace sdgen {

// ---- what is available ------------------------------------------------------

namespace {

int64_t meminfo_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t value = 0;
  std::string unit;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value * 1024;
  }
  return -1;
}

}  // namespace

AvailableMemory available_memory(const torch::Device& device, int64_t resident_weights) {
  AvailableMemory out;
  if (const char* env = std::getenv("SDGEN_MEMORY_LIMIT_MB")) {
    char* end = nullptr;
    const double mb = std::strtod(env, &end);
    if (end != env && mb > 0) {
      out.bytes = static_cast<int64_t>(mb * kMiB);
      out.source = "SDGEN_MEMORY_LIMIT_MB";
      return out;
    }
  }
  if (device.is_cuda()) {
#ifdef SDGEN_WITH_CUDA
    int64_t free = 0, total = 0, cached_unused = 0;
    cuda::memory_info(device.has_index() ? device.index() : 0, &free, &total, &cached_unused);
    out.bytes = free + cached_unused + resident_weights;
    out.source = "free GPU memory";
#endif
    return out;
  }
  const int64_t available = meminfo_available();
  if (available >= 0) {
    out.bytes = available + resident_weights;
    out.source = "MemAvailable";
  }
  return out;
}

void release_cached_memory(const torch::Device& device) {
#ifdef SDGEN_WITH_CUDA
  if (device.is_cuda()) cuda::release_cached_memory();
#else
  (void)device;
#endif
}

// ---- messages -----------------------------------------------------------------

std::string format_bytes(int64_t bytes) {
  char buf[32];
  const double b = static_cast<double>(bytes);
  if (bytes >= 1024 * kMiB) {
    std::snprintf(buf, sizeof buf, "%.1f GiB", b / (1024.0 * kMiB));
  } else {
    std::snprintf(buf, sizeof buf, "%.0f MiB", std::max(0.0, b / kMiB));
  }
  return buf;
}

namespace {

std::string describe(const MemorySettings& settings, const MemoryRequest& request) {
  std::ostringstream s;
  s << request.width << "x" << request.height << ", batch " << request.batch_size
    << (request.guided ? " with guidance" : "");
  if (request.img2img) s << ", img2img";
  if (request.vae_tiling) s << ", VAE tiling";
  s << ", " << (settings.weights_as_stored ? "fp32-lowmem" : dtype_name(settings.dtype));
  if (settings.vae_dtype != settings.dtype) s << " (VAE " << dtype_name(settings.vae_dtype) << ")";
  s << " on " << settings.device.str();
  return s.str();
}

std::string breakdown(const MemoryEstimate& estimate) {
  return "weights " + format_bytes(estimate.weights) + " + " +
         (estimate.lora_copies > 0 ? "LoRA originals " + format_bytes(estimate.lora_copies) + " + "
                                   : std::string()) +
         estimate.peak_stage + " " + format_bytes(estimate.peak_activations()) + " + runtime " +
         format_bytes(estimate.overhead);
}

}  // namespace

std::string memory_suggestions(const MemoryEstimate& estimate, const MemorySettings& settings,
                               const MemoryRequest& request) {
  std::vector<std::string> tips;
  const bool weights_only = estimate.peak_stage.empty();  // the weights alone do not fit
  if (!weights_only) {
    const bool weights_dominate = estimate.weights > estimate.peak_activations();
    if (request.batch_size > 1) tips.push_back("a smaller --batch-size");
    if (!weights_dominate || static_cast<int64_t>(request.width) * request.height > 512 * 512)
      tips.push_back("a smaller size (-W/-H)");
    // Tiles are 512x512 pixels: smaller images are one tile.
    if (!request.vae_tiling && estimate.peak_stage.find("VAE decode") != std::string::npos &&
        (request.width > 512 || request.height > 512))
      tips.push_back("--vae-tiling");
  }
  if (settings.dtype == torch::kFloat32)
    tips.push_back(settings.device.is_cuda() ? "--dtype fp16" : "--dtype bf16");
  if (settings.device.is_cuda()) tips.push_back("--device cpu");
  if (tips.empty()) return "a machine with more memory";
  std::string out;
  for (size_t i = 0; i < tips.size(); ++i)
    out += (i == 0 ? "" : i + 1 == tips.size() ? " or " : ", ") + tips[i];
  return out;
}

std::string memory_check_message(const MemoryEstimate& estimate, const AvailableMemory& available,
                                 const MemorySettings& settings, const MemoryRequest& request) {
  if (available.bytes < 0 || estimate.total <= available.bytes) return "";
  std::string m = "not enough memory: ";
  if (estimate.peak_stage.empty()) {
    m += std::string("the model's weights need about ") + format_bytes(estimate.weights) + " in " +
         (settings.weights_as_stored ? "fp32-lowmem" : dtype_name(settings.dtype)) + " on " +
         settings.device.str() + " (+ runtime " + format_bytes(estimate.overhead) + ")";
  } else {
    m += describe(settings, request) + " needs about " + format_bytes(estimate.total) + " (" +
         breakdown(estimate) + ")";
  }
  return m + ", " + format_bytes(available.bytes) + " available (" + available.source + "); try " +
         memory_suggestions(estimate, settings, request) + " (--no-memory-check runs it anyway)";
}

bool is_out_of_memory(const std::exception& error) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&error)) return true;
  if (dynamic_cast<const std::bad_alloc*>(&error)) return true;
  const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
  std::string text = c10_error ? c10_error->what_without_backtrace() : error.what();
  for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text.find("out of memory") != std::string::npos ||
         text.find("cudnn_status_alloc_failed") != std::string::npos ||
         text.find("cublas_status_alloc_failed") != std::string::npos;
}

std::string out_of_memory_message(const MemoryEstimate& estimate, const MemorySettings& settings,
                                  const MemoryRequest& request) {
  std::string m = "out of memory on " + settings.device.str() + " while generating " +
                  describe(settings, request);
  if (estimate.total > 0)
    m +=
        " (estimated need about " + format_bytes(estimate.total) + ": " + breakdown(estimate) + ")";
  return m + "; try " + memory_suggestions(estimate, settings, request);
}

}  // namespace sdgen
