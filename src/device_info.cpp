#include "sdgen/device_info.h"

#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "sdgen/error.h"

#ifdef SDGEN_WITH_CUDA
#include "cuda/cuda_info.h"
#endif

namespace sdgen {

torch::Device device_from_name(const std::string& name) {
  if (name == "auto")
    return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::kCPU;
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw Error("--device " + name +
                  ": CUDA is not available in this build of libtorch or on this machine; use "
                  "--device cpu");
    int index = 0;
    if (name.size() > 5) {
      size_t used = 0;
      try {
        index = std::stoi(name.substr(5), &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != name.size() - 5) throw Error("--device " + name + ": expected cuda:N");
    }
    if (index < 0 || index >= static_cast<int>(torch::cuda::device_count()))
      throw Error("--device " + name + ": no such GPU (" +
                  std::to_string(torch::cuda::device_count()) + " available)");
    return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw Error("--device " + name + ": expected auto, cpu, cuda or cuda:N");
}

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
