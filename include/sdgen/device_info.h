#pragma once

// What the benchmark and `--info` report about the machine: device names,
// peak GPU memory (libtorch's caching allocator) and process memory.

#include <cstdint>
#include <string>

#include <torch/torch.h>

namespace sdgen {

// The device a --device flag names: "auto" (the first GPU where CUDA is
// available, else the CPU), "cpu", "cuda" or "cuda:N". Throws Error naming
// the flag for other names, and for a GPU that this build of libtorch or this
// machine does not have.
torch::Device device_from_name(const std::string& name);

// "NVIDIA H200" for a CUDA device, the CPU model name for the CPU.
std::string device_name(const torch::Device& device);

struct GpuMemoryStats {
  int64_t peak_allocated_bytes = 0;  // tensors
  int64_t peak_reserved_bytes = 0;   // what the caching allocator took from the driver
};
// Zeros on the CPU and in builds without CUDA support.
GpuMemoryStats peak_gpu_memory(const torch::Device& device);
void reset_peak_gpu_memory(const torch::Device& device);

int64_t peak_rss_bytes();     // high-water mark of this process's resident memory
int64_t current_rss_bytes();  // resident memory now

}  // namespace sdgen
