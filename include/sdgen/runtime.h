#pragma once

// Process-wide CPU settings for fast inference with libtorch.

namespace sdgen {

// Sets libtorch's intra-op threads (0 = all cores) and keeps freed memory in
// the process: the allocator would otherwise hand large activation buffers
// back to the kernel after every layer and page-fault them in again on the
// next one, which on virtual machines costs more than the arithmetic.
// Returns the thread count in use.
int init_cpu_runtime(int threads = 0);

}  // namespace sdgen
