#include "cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>
#include <torch/version.h>

#include <cstddef>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

namespace sdgen {

#if TORCH_VERSION_MAJOR < 2
namespace {

// Blocks from this size up are mmap'd by glibc malloc (its largest mmap
// threshold) and unmapped on free, so every large activation of the VAE
// decoder (64-134 MB at 512x512) was page-faulted and zeroed by the kernel
// again on every layer: measured 22% of a CPU generation's time in
// clear_page and fault handling on these virtual machines. They are kept
// here and reused instead. Smaller blocks stay with malloc, whose heap
// sdgen does not trim (init_cpu_runtime).
constexpr size_t kLargeBlock = 32u << 20;
constexpr size_t kRound = 2u << 20;  // huge-page granularity

class LargeBlockCache final : public c10::Allocator {
 public:
  explicit LargeBlockCache(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(size_t bytes) const override {
    if (bytes < kLargeBlock) return fallback_->allocate(bytes);
    const size_t size = (bytes + kRound - 1) / kRound * kRound;
    void* ptr = take(size);
    return {ptr, ptr, &LargeBlockCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  // Used by raw_allocate / raw_deallocate (oneDNN scratch buffers): any block.
  c10::DeleterFnPtr raw_deleter() const override { return &LargeBlockCache::release_any; }

  static LargeBlockCache*& instance() {
    static LargeBlockCache* self = nullptr;
    return self;
  }

 private:
  void* take(size_t size) const {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(size);
      if (it != free_.end()) {
        void* ptr = it->second;
        free_.erase(it);
        return ptr;
      }
      // A miss means the working set changed shape (the UNet's blocks are
      // done, the VAE's begin): hand the idle blocks back before growing,
      // so that the cache never holds more than the current phase uses.
      for (const auto& [block_size, block] : free_) {
        munmap(block, block_size);
        sizes_.erase(block);
      }
      free_.clear();
    }
    void* ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) throw std::bad_alloc();
    madvise(ptr, size, MADV_HUGEPAGE);
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[ptr] = size;
    return ptr;
  }

  static void release_any(void* ptr) {
    LargeBlockCache* self = instance();
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      auto it = self->sizes_.find(ptr);
      if (it != self->sizes_.end()) {
        self->free_.emplace(it->second, ptr);
        return;
      }
    }
    self->fallback_->raw_deleter()(ptr);
  }

  static void release(void* ptr) {
    LargeBlockCache* self = instance();
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->free_.emplace(self->sizes_.at(ptr), ptr);
  }

  c10::Allocator* fallback_;
  mutable std::mutex mutex_;
  mutable std::multimap<size_t, void*> free_;        // idle blocks by size
  mutable std::unordered_map<void*, size_t> sizes_;  // every block handed out or idle
};

}  // namespace

void install_cpu_block_cache() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never destroyed: tensors may be freed during static destruction.
    auto* cache = new LargeBlockCache(c10::GetDefaultCPUAllocator());
    LargeBlockCache::instance() = cache;
    c10::SetCPUAllocator(cache, /*priority=*/10);
  });
}
#else
// libtorch >= 2 is only used on the GPU machine; its CPU allocator is left as is.
void install_cpu_block_cache() {}
#endif

}  // namespace sdgen
