#include "cuda/cuda_info.h"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

namespace sdgen::cuda {

std::string device_name(int index) { return at::cuda::getDeviceProperties(index)->name; }

namespace {

// The caching allocator sizes its per-device tables on first use; statistics
// asked for before any CUDA tensor exists would name an invalid device.
void ensure_initialised(int index) {
  (void)at::empty({1}, at::TensorOptions().device(at::kCUDA, static_cast<c10::DeviceIndex>(index)));
}

}  // namespace

void peak_memory(int index, int64_t* allocated, int64_t* reserved) {
  ensure_initialised(index);
  const auto stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  // Index 0 is the aggregate over small and large pools.
  *allocated = stats.allocated_bytes[0].peak;
  *reserved = stats.reserved_bytes[0].peak;
}

void reset_peak_memory(int index) {
  ensure_initialised(index);
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(index));
}

void memory_info(int index, int64_t* free, int64_t* total, int64_t* cached_unused) {
  ensure_initialised(index);
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
  size_t f = 0, t = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&f, &t));
  *free = static_cast<int64_t>(f);
  *total = static_cast<int64_t>(t);
  const auto stats =
      c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(index));
  *cached_unused = stats.reserved_bytes[0].current - stats.allocated_bytes[0].current;
}

void release_cached_memory() { c10::cuda::CUDACachingAllocator::emptyCache(); }

}  // namespace sdgen::cuda
