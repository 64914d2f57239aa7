// CPU runtime settings: the default dtype rule and the large-block cache that
// keeps libtorch's big CPU tensors from being page-faulted again every layer.

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <dlfcn.h>
#include <torch/version.h>

#include <sched.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "cpu_allocator.h"
#include "sdgen/runtime.h"
#include "test_util.h"

namespace sdgen {
namespace {

TEST(Runtime, DefaultDtypeFollowsTheDevice) {
  EXPECT_EQ(default_dtype(torch::Device("cuda")), torch::kFloat16);
  EXPECT_EQ(default_dtype(torch::kCPU), cpu_has_native_bf16() ? torch::kBFloat16 : torch::kFloat32);
}

TEST(Runtime, LargeCpuBlocksAreReusedAndSmallOnesStayWithMalloc) {
  install_cpu_block_cache();
  install_cpu_block_cache();     // idempotent
  const int64_t big = 40 << 20;  // 40 MB of bytes
  void* first = nullptr;
  {
    auto a = torch::empty({big}, torch::kUInt8);
    a.fill_(7);
    first = a.data_ptr();
  }
  auto b = torch::empty({big}, torch::kUInt8);
#if TORCH_VERSION_MAJOR < 2
  EXPECT_EQ(b.data_ptr(), first) << "a freed block of the same size is handed out again";
#endif
  // A new size unmaps the idle blocks; values are whatever was written.
  auto c = torch::ones({big / 2 + 4096}, torch::kFloat);
  EXPECT_EQ(c.sum().item<double>(), static_cast<double>(big / 2 + 4096));
  auto small = torch::ones({1000});
  EXPECT_EQ(small.sum().item<float>(), 1000.0f);
  // raw_allocate / raw_deallocate (oneDNN's scratch buffers) for both kinds.
  c10::Allocator* allocator = c10::GetCPUAllocator();
  for (size_t bytes : {size_t{4096}, size_t{48} << 20}) {
    void* p = allocator->raw_allocate(bytes);
    static_cast<char*>(p)[bytes - 1] = 1;
    allocator->raw_deallocate(p);
  }
}

// OpenBLAS's own thread pool is cut to one thread (libtorch's pool does the
// parallel work), unless OPENBLAS_NUM_THREADS says otherwise.
TEST(Runtime, OpenBlasGetsOneThreadUnlessItsVariableIsSet) {
  using GetThreads = int (*)();
  using SetThreads = void (*)(int);
  const auto get = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  const auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (get == nullptr || set == nullptr) GTEST_SKIP() << "libtorch's BLAS here is not OpenBLAS";
  const int torch_threads = at::get_num_threads();
  const char* preset = std::getenv("OPENBLAS_NUM_THREADS");
  if (preset == nullptr) {
    set(2);
    EXPECT_EQ(init_cpu_runtime(2), 2);
    EXPECT_EQ(get(), 1);
    EXPECT_EQ(at::get_num_threads(), 2);
    ASSERT_EQ(setenv("OPENBLAS_NUM_THREADS", "2", 1), 0);
  }
  set(2);
  init_cpu_runtime(2);
  EXPECT_EQ(get(), 2) << "OPENBLAS_NUM_THREADS is the user's";
  if (preset == nullptr) unsetenv("OPENBLAS_NUM_THREADS");
  at::set_num_threads(torch_threads);
}

// --threads 0: OMP_NUM_THREADS when set, else the cores this thread may run
// on (a taskset or a Slurm/container cpuset), never every core of a machine
// the process was given only a part of.
TEST(Runtime, DefaultThreadsFollowTheAffinityAndOmpNumThreads) {
  const char* preset = std::getenv("OMP_NUM_THREADS");
  const std::string saved = preset ? preset : "";
  ASSERT_EQ(setenv("OMP_NUM_THREADS", "3", 1), 0);
  EXPECT_EQ(default_cpu_threads(), 3);
  ASSERT_EQ(setenv("OMP_NUM_THREADS", "zero", 1), 0);  // not a count: ignored
  const int unset_count = [] {
    unsetenv("OMP_NUM_THREADS");
    return default_cpu_threads();
  }();
  EXPECT_EQ(default_cpu_threads(), unset_count);
  cpu_set_t all;
  CPU_ZERO(&all);
  ASSERT_EQ(sched_getaffinity(0, sizeof(all), &all), 0);
  EXPECT_EQ(unset_count, CPU_COUNT(&all));
  EXPECT_LE(unset_count, static_cast<int>(std::thread::hardware_concurrency()));
  // A thread bound to one core (affinity is per thread; a process started
  // under taskset gets it for every thread).
  int bound_count = 0;
  std::thread bound([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
      if (CPU_ISSET(cpu, &all)) {
        CPU_SET(cpu, &one);
        break;
      }
    if (sched_setaffinity(0, sizeof(one), &one) == 0) bound_count = default_cpu_threads();
  });
  bound.join();
  EXPECT_EQ(bound_count, 1);
  if (preset) setenv("OMP_NUM_THREADS", saved.c_str(), 1);
}

}  // namespace
}  // namespace sdgen
