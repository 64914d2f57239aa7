#pragma once

namespace sdgen {

// Makes libtorch's CPU tensors of 32 MB and more come from a cache of
// mmap'd blocks that are reused instead of being unmapped and page-faulted
// again on every layer (libtorch 1.13; a no-op on libtorch >= 2). Idle blocks
// are unmapped as soon as a request of a new size arrives, so the cache holds
// no more than the current working set. Idempotent.
void install_cpu_block_cache();

}  // namespace sdgen
