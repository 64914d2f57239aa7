#include "sdgen/runtime.h"

#include <ATen/Parallel.h>
#include <malloc.h>

#include <algorithm>
#include <thread>

namespace sdgen {

int init_cpu_runtime(int threads) {
  const int n =
      threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
#if defined(__GLIBC__)
  // Largest mmap threshold glibc accepts (32 MiB on 64-bit): blocks below it
  // come from the heap and are reused. Never trim the heap back to the kernel.
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 * 1024 * 1024);
#endif
  return n;
}

torch::ScalarType default_dtype(const torch::Device& device) {
  return device.is_cuda() ? torch::kFloat16 : torch::kFloat32;
}

}  // namespace sdgen
