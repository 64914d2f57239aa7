// `sdgen serve`'s GET /metrics (serve_internal.h ServeMetrics): the
// Prometheus text exposition format 0.0.4 (prometheus.io/docs/instrumenting/
// exposition_formats): "# HELP" and "# TYPE" lines, then one sample per line.

#include <cmath>
#include <cstdio>
#include <sstream>

#include "sdgen/device_info.h"
#include "serve_internal.h"

#ifdef SDGEN_WITH_CUDA
#include "cuda/cuda_info.h"
#endif

namespace sdgen::cli {

namespace {

// Upper bounds of the seconds-per-image histogram: the tiny model's 0.1 s
// to a large model's minutes on a CPU.
const std::vector<double> kImageSecondsBuckets = {0.05, 0.1, 0.25, 0.5, 1,   2.5,
                                                  5,    10,  30,   60,  120, 300};

// A label value with the three characters the format escapes.
std::string metric_label(const std::string& value) {
  std::string out;
  for (const char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

std::string metric_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char text[64];
  std::snprintf(text, sizeof text, "%.17g", v);
  return text;
}

void metric_header(std::ostringstream& out, const std::string& name, const std::string& type,
                   const std::string& help) {
  out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
}

}  // namespace

void ServeMetrics::count_request(const std::string& route, int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{route, status}];
}

void ServeMetrics::count_batch(int images, double seconds, double steps_per_second) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (image_buckets_.empty()) image_buckets_.assign(kImageSecondsBuckets.size(), 0);
  images_ += static_cast<uint64_t>(images);
  last_steps_per_second_ = steps_per_second;
  // Each image of a batch took the batch's time over its size.
  const double each = images > 0 ? seconds / images : seconds;
  for (size_t i = 0; i < kImageSecondsBuckets.size(); ++i)
    if (each <= kImageSecondsBuckets[i]) image_buckets_[i] += static_cast<uint64_t>(images);
  image_seconds_sum_ += each * images;
}

void ServeMetrics::count_dropped() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++dropped_;
}

std::string ServeMetrics::render(int queue_depth, bool generating,
                                 const torch::Device& device) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::ostringstream out;
  metric_header(out, "sdgen_http_requests_total", "counter",
                "HTTP requests answered, by route and status code.");
  for (const auto& [key, count] : requests_)
    out << "sdgen_http_requests_total{route=\"" << metric_label(key.first) << "\",status=\""
        << key.second << "\"} " << count << "\n";
  metric_header(out, "sdgen_queue_depth", "gauge", "Requests waiting for the model.");
  out << "sdgen_queue_depth " << queue_depth << "\n";
  metric_header(out, "sdgen_generating", "gauge", "1 while a request is using the model.");
  out << "sdgen_generating " << (generating ? 1 : 0) << "\n";
  metric_header(out, "sdgen_images_generated_total", "counter", "Images generated.");
  out << "sdgen_images_generated_total " << images_ << "\n";
  metric_header(out, "sdgen_requests_dropped_total", "counter",
                "Queued requests dropped without work because their client hung up.");
  out << "sdgen_requests_dropped_total " << dropped_ << "\n";
  metric_header(out, "sdgen_unet_steps_per_second", "gauge",
                "UNet steps per second of the last batch's sampling loop.");
  out << "sdgen_unet_steps_per_second " << metric_number(last_steps_per_second_) << "\n";
  metric_header(out, "sdgen_image_seconds", "histogram",
                "Wall seconds per image (a batch's time over its size).");
  uint64_t total = 0;
  for (size_t i = 0; i < kImageSecondsBuckets.size(); ++i) {
    const uint64_t n = image_buckets_.empty() ? 0 : image_buckets_[i];
    out << "sdgen_image_seconds_bucket{le=\"" << metric_number(kImageSecondsBuckets[i]) << "\"} "
        << n << "\n";
  }
  total = images_;
  out << "sdgen_image_seconds_bucket{le=\"+Inf\"} " << total << "\n";
  out << "sdgen_image_seconds_sum " << metric_number(image_seconds_sum_) << "\n";
  out << "sdgen_image_seconds_count " << total << "\n";
  metric_header(out, "process_resident_memory_bytes", "gauge",
                "Resident memory of the process (/proc/self/statm).");
  out << "process_resident_memory_bytes " << current_rss_bytes() << "\n";
#ifdef SDGEN_WITH_CUDA
  if (device.is_cuda()) {
    const int index = device.has_index() ? device.index() : 0;
    int64_t free_bytes = 0, total_bytes = 0, cached = 0;
    cuda::memory_info(index, &free_bytes, &total_bytes, &cached);
    const GpuMemoryStats peak = peak_gpu_memory(device);
    metric_header(out, "sdgen_gpu_memory_used_bytes", "gauge",
                  "GPU memory in use on the model's device (cudaMemGetInfo: total - free).");
    out << "sdgen_gpu_memory_used_bytes " << total_bytes - free_bytes << "\n";
    metric_header(out, "sdgen_gpu_memory_total_bytes", "gauge", "GPU memory of the device.");
    out << "sdgen_gpu_memory_total_bytes " << total_bytes << "\n";
    metric_header(out, "sdgen_gpu_memory_peak_allocated_bytes", "gauge",
                  "Peak GPU memory held by tensors (libtorch's caching allocator).");
    out << "sdgen_gpu_memory_peak_allocated_bytes " << peak.peak_allocated_bytes << "\n";
  }
#else
  (void)device;
#endif
  return out.str();
}

}  // namespace sdgen::cli
