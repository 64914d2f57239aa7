#pragma once

// Process-wide CPU settings for fast inference with libtorch.

#include <string>

#include <torch/torch.h>

namespace sdgen {

// The threads `--threads 0` means: OMP_NUM_THREADS when set, else the cores
// this process may run on (its CPU affinity: taskset, a cpuset).
int default_cpu_threads();

// Sets libtorch's intra-op threads (0 = default_cpu_threads()) and keeps freed memory in
// the process: the allocator would otherwise hand large activation buffers
// back to the kernel after every layer and page-fault them in again on the
// next one, which on virtual machines costs more than the arithmetic.
// OpenBLAS, when it is libtorch's BLAS, gets one thread per caller (its own
// pool and libtorch's would spin-wait for the same cores) unless
// OPENBLAS_NUM_THREADS is set.
// Returns the thread count in use.
int init_cpu_runtime(int threads = 0);

// Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX), read from
// /proc/cpuinfo once. Without it libtorch emulates bf16 and fp32 is faster.
bool cpu_has_native_bf16();

// The compute dtype used when none is asked for: fp16 on CUDA; on the CPU
// bf16 where the CPU has native bf16 (a UNet step ~4x faster than fp32 here,
// golden images within a few 8-bit levels: docs/performance.md), else fp32.
torch::ScalarType default_dtype(const torch::Device& device);

// Whether a CPU model keeps its checkpoint's weights as stored (fp16/bf16,
// mapped from the file) and computes in fp32, converting each layer's weights
// on use (LoadOptions::weights_as_stored, --dtype fp32-lowmem), when no dtype
// is asked for: on a CPU without native bf16. Same images as fp32 weights for
// fp16/bf16/fp32 checkpoints, about half the memory.
bool default_weights_as_stored(const torch::Device& device);

// LoadOptions::weights_as_stored for a --dtype name: true for "fp32-lowmem"
// on the CPU, default_weights_as_stored(device) for "auto", else false.
bool weights_as_stored_from_name(const std::string& name, const torch::Device& device);

// "fp16", "bf16", "fp32" (libtorch's name for other types), as the flags spell them.
const char* dtype_name(torch::ScalarType dtype);

// The (compute) dtype a flag names: fp32/float32/fp32-lowmem, fp16/float16,
// bf16/bfloat16, or `automatic` for "auto". Throws
// Error("dtype NAME: expected auto, fp32, fp32-lowmem, fp16 or bf16").
torch::ScalarType dtype_from_name(const std::string& name, torch::ScalarType automatic);

}  // namespace sdgen
