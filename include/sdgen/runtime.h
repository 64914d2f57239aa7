#pragma once

// Process-wide CPU settings for fast inference with libtorch.

#include <torch/torch.h>

namespace sdgen {

// Sets libtorch's intra-op threads (0 = all cores) and keeps freed memory in
// the process: the allocator would otherwise hand large activation buffers
// back to the kernel after every layer and page-fault them in again on the
// next one, which on virtual machines costs more than the arithmetic.
// Returns the thread count in use.
int init_cpu_runtime(int threads = 0);

// The compute dtype used when none is asked for: fp16 on CUDA, fp32 on the
// CPU. (bf16 on a CPU with native bf16 ran a UNet step 3.5x faster here but
// is not the default yet: see docs/performance.md for its measured error.)
torch::ScalarType default_dtype(const torch::Device& device);

}  // namespace sdgen
