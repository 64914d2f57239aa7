#include "sdgen/device_info.h"

#include <sys/resource.h>
#include <unistd.h>

#include <fstream>

#ifdef SDGEN_WITH_CUDA
#include "cuda/cuda_info.h"
#endif

namespace sdgen {

std::string device_name(const torch::Device& device) {
#ifdef SDGEN_WITH_CUDA
  if (device.is_cuda()) return cuda::device_name(device.has_index() ? device.index() : 0);
#endif
  if (device.is_cuda()) return "CUDA device";
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  }
  return "CPU";
}

GpuMemoryStats peak_gpu_memory(const torch::Device& device) {
  GpuMemoryStats stats;
#ifdef SDGEN_WITH_CUDA
  if (device.is_cuda())
    cuda::peak_memory(device.has_index() ? device.index() : 0, &stats.peak_allocated_bytes,
                      &stats.peak_reserved_bytes);
#else
  (void)device;
#endif
  return stats;
}

void reset_peak_gpu_memory(const torch::Device& device) {
#ifdef SDGEN_WITH_CUDA
  if (device.is_cuda()) cuda::reset_peak_memory(device.has_index() ? device.index() : 0);
#else
  (void)device;
#endif
}

int64_t peak_rss_bytes() {
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

int64_t current_rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace sdgen
