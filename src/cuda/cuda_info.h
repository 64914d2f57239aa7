#pragma once

// CUDA-only parts of device_info (built when SDGEN_WITH_CUDA).

#include <cstdint>
#include <string>

namespace sdgen::cuda {

std::string device_name(int index);
void peak_memory(int index, int64_t* allocated, int64_t* reserved);
void reset_peak_memory(int index);

}  // namespace sdgen::cuda
