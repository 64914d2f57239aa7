#pragma once

// CUDA-only parts of device_info (built when SDGEN_WITH_CUDA).

#include <cstdint>
#include <string>

namespace sdgen::cuda {

std::string device_name(int index);
void peak_memory(int index, int64_t* allocated, int64_t* reserved);
void reset_peak_memory(int index);
// cudaMemGetInfo of the device, and what libtorch's caching allocator holds
// reserved but unused (reusable by the next allocation).
void memory_info(int index, int64_t* free, int64_t* total, int64_t* cached_unused);
// Gives the caching allocator's unused blocks back to the driver.
void release_cached_memory();

}  // namespace sdgen::cuda
