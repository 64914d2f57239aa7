#include "sdgen/runtime.h"

#include "cpu_allocator.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <malloc.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "sdgen/error.h"

namespace sdgen {
namespace {

// Debian's libblas.so.3 is OpenBLAS, which keeps a pool of threads of its own
// beside libtorch's OpenMP pool; after each call both pools spin-wait
// (sched_yield) for the same cores. On 2 cores that made a training step of
// the default model 1.7x slower and sampling it 1.5-2x slower than with one
// BLAS thread (docs/performance.md). Each caller gets one BLAS thread;
// libtorch makes a single call for a Linear or each matrix of a bmm, so
// sdgen's Linear and attention split their rows over libtorch's threads
// themselves (src/nn/cpu_parallel.h). OPENBLAS_NUM_THREADS, when set,
// is left to OpenBLAS; other BLAS libraries (MKL in pip's libtorch) lack the
// symbol and are left alone.
void limit_openblas_threads() {
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr) return;
  using SetThreads = void (*)(int);
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): dlsym returns void*
  const auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set != nullptr) set(1);
}

}  // namespace

int default_cpu_threads() {
  // OMP_NUM_THREADS, when set, is what libtorch's OpenMP pool starts with.
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && n > 0) return static_cast<int>(std::min(n, 1024L));
  }
  // The cores this process may run on (taskset, a container's or Slurm's
  // cpuset), not every core of the machine: 64 threads spin-waiting for 4
  // cores run many times slower than 4.
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int init_cpu_runtime(int threads) {
  const int n = threads > 0 ? threads : default_cpu_threads();
  at::set_num_threads(n);
  limit_openblas_threads();
#if defined(__GLIBC__)
  // Largest mmap threshold glibc accepts (32 MiB on 64-bit): blocks below it
  // come from the heap and are reused. Never trim the heap back to the kernel.
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 * 1024 * 1024);
#endif
  install_cpu_block_cache();
  return n;
}

bool cpu_has_native_bf16() {
  static const bool has = [] {
    // The kernel's view of the CPU; hypervisors hide features they do not pass through.
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    while (std::getline(cpuinfo, line)) {
      if (line.rfind("flags", 0) != 0) continue;
      std::istringstream flags(line.substr(line.find(':') + 1));
      std::string flag;
      while (flags >> flag)
        if (flag == "avx512_bf16" || flag == "amx_bf16") return true;
      return false;
    }
    return false;
  }();
  return has;
}

torch::ScalarType default_dtype(const torch::Device& device) {
  if (device.is_cuda()) return torch::kFloat16;
  return cpu_has_native_bf16() ? torch::kBFloat16 : torch::kFloat32;
}

bool default_weights_as_stored(const torch::Device& device) {
  // Without native bf16 the CPU computes in fp32: converting each layer's
  // fp16 weights on use gives the same images as converting them all at load
  // (fp16 -> fp32 is exact) in half the memory, and loads without copying
  // (docs/performance.md, issue 33).
  return device.is_cpu() && !cpu_has_native_bf16();
}

bool weights_as_stored_from_name(const std::string& name, const torch::Device& device) {
  if (name == "fp32-lowmem") return device.is_cpu();
  return name == "auto" && default_weights_as_stored(device);
}

const char* dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat16:
      return "fp16";
    case torch::kBFloat16:
      return "bf16";
    case torch::kFloat32:
      return "fp32";
    default:
      return c10::toString(dtype);
  }
}

torch::ScalarType dtype_from_name(const std::string& name, torch::ScalarType automatic) {
  if (name == "auto") return automatic;
  if (name == "fp32" || name == "float32" || name == "fp32-lowmem") return torch::kFloat32;
  if (name == "fp16" || name == "float16") return torch::kFloat16;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  throw Error("dtype " + name + ": expected auto, fp32, fp32-lowmem, fp16 or bf16");
}

}  // namespace sdgen
