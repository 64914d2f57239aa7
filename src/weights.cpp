#include "sdgen/weights.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include <torch/cuda.h>

#include "sdgen/error.h"
#include "sdgen/layers.h"

namespace sdgen {

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

TensorMap tensors_with_prefix(const SafeTensorsFile& file, const std::string& prefix) {
  TensorMap out;
  for (const auto& kv : file.tensors())
    if (kv.first.compare(0, prefix.size(), prefix) == 0)
      out.emplace(kv.first.substr(prefix.size()), file.tensor(kv.first));
  return out;
}

namespace {

struct Assignment {
  torch::Tensor param;
  torch::Tensor source;  // CPU, any dtype
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  bool channels_last = false;
};

// The parameter's final layout: channels_last for 4-D weights when asked.
torch::Tensor in_layout(const torch::Tensor& t, const Assignment& a) {
  return a.channels_last && t.dim() == 4 ? t.contiguous(torch::MemoryFormat::ChannelsLast) : t;
}

// Host -> GPU upload through two pinned staging buffers: tensors are packed
// into one buffer (memcpy from the mapped file) while the other is copied to
// the GPU asynchronously; each tensor is then viewed out of the GPU chunk in
// its stored dtype and converted there (a view, no copy, when the dtype
// already matches).
void upload_staged(std::vector<Assignment>& items) {
  constexpr int64_t kAlign = 256;
  int64_t chunk = int64_t{64} << 20;
  for (const auto& a : items)
    chunk = std::max<int64_t>(
        chunk, (static_cast<int64_t>(a.source.nbytes()) + kAlign - 1) / kAlign * kAlign);
  const torch::Device device = items.front().device;
  auto host_options = torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true);
  torch::Tensor staging[2] = {torch::empty({chunk}, host_options),
                              torch::empty({chunk}, host_options)};
  int current = 0;
  int64_t used = 0;
  std::vector<std::pair<Assignment*, int64_t>> pending;  // item, offset in the chunk

  auto flush = [&] {
    if (pending.empty()) return;
    // The other buffer's copy was queued before this one's: waiting for the
    // device here guarantees it is done before that buffer is refilled.
    torch::cuda::synchronize(device.index());
    auto gpu = torch::empty({used}, torch::TensorOptions().dtype(torch::kUInt8).device(device));
    gpu.copy_(staging[current].narrow(0, 0, used), /*non_blocking=*/true);
    for (auto& [item, offset] : pending) {
      const auto nbytes = static_cast<int64_t>(item->source.nbytes());
      auto t =
          gpu.narrow(0, offset, nbytes).view(item->source.scalar_type()).view(item->source.sizes());
      if (t.scalar_type() != item->dtype) t = t.to(item->dtype);
      item->param.set_data(in_layout(t, *item));
    }
    pending.clear();
    used = 0;
    current ^= 1;
  };

  for (auto& a : items) {
    const auto nbytes = static_cast<int64_t>(a.source.nbytes());
    if (used + nbytes > chunk) flush();
    prefault_mapped_pages(a.source);
    auto src = a.source.contiguous();
    if (nbytes > 0)
      std::memcpy(staging[current].data_ptr<uint8_t>() + used, src.data_ptr(),
                  static_cast<size_t>(nbytes));
    release_mapped_pages(a.source);
    pending.emplace_back(&a, used);
    used += (nbytes + kAlign - 1) / kAlign * kAlign;
  }
  flush();
  torch::cuda::synchronize(device.index());
}

// CPU parameters of one load_weights() call live in one anonymous mapping,
// populated up front (with transparent huge pages where the kernel has them):
// writing 2 GB of converted weights into fresh memory otherwise takes half a
// million page faults, which cost seconds in a virtual machine. Each
// parameter is a view that keeps the mapping alive.
class CpuArena {
 public:
  explicit CpuArena(size_t bytes) : bytes_(std::max<size_t>(bytes, 1)) {
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      throw Error("cannot allocate " + std::to_string(bytes_) + " bytes for weights");
    data_ = static_cast<uint8_t*>(p);
#ifdef MADV_HUGEPAGE
    ::madvise(p, bytes_, MADV_HUGEPAGE);
#endif
#ifdef MADV_POPULATE_WRITE
    ::madvise(p, bytes_, MADV_POPULATE_WRITE);  // best effort (Linux >= 5.14)
#endif
  }
  ~CpuArena() { ::munmap(data_, bytes_); }
  CpuArena(const CpuArena&) = delete;
  CpuArena& operator=(const CpuArena&) = delete;
  uint8_t* data() { return data_; }

 private:
  size_t bytes_;
  uint8_t* data_ = nullptr;
};

constexpr size_t kCpuAlign = 64;

size_t aligned_bytes(const Assignment& a) {
  const size_t bytes = static_cast<size_t>(a.source.numel()) * c10::elementSize(a.dtype);
  return (bytes + kCpuAlign - 1) / kCpuAlign * kCpuAlign;
}

// Converts every item into one arena (dtype and layout of its target).
void load_cpu(std::vector<Assignment>& items) {
  size_t total = 0;
  for (const auto& a : items) total += aligned_bytes(a);
  auto arena = std::make_shared<CpuArena>(total);
  size_t offset = 0;
  for (auto& a : items) {
    const auto sizes = a.source.sizes().vec();
    std::vector<int64_t> strides(sizes.size());
    if (a.channels_last && sizes.size() == 4) {
      // NHWC: channels innermost.
      strides = {sizes[1] * sizes[2] * sizes[3], 1, sizes[3] * sizes[1], sizes[1]};
    } else {
      int64_t stride = 1;
      for (size_t i = sizes.size(); i-- > 0;) {
        strides[i] = stride;
        stride *= sizes[i];
      }
    }
    auto dst = torch::from_blob(
        arena->data() + offset, sizes, strides, [arena](void*) {},
        torch::TensorOptions().dtype(a.dtype));
    prefault_mapped_pages(a.source);
    dst.copy_(a.source);
    release_mapped_pages(a.source);
    a.param.set_data(dst);
    offset += aligned_bytes(a);
  }
}

// make_weights_resident's bookkeeping: the file ranges of each module loaded
// as stored, by module address (only compared, never dereferenced: a module
// destroyed leaves ranges that release_mapped_pages no longer finds inside a
// live mapping, and a new module at its address replaces them).
struct ResidentWeights {
  std::mutex mutex;
  std::map<const void*, std::vector<std::pair<void*, int64_t>>> ranges;
  const void* current = nullptr;
};
ResidentWeights& resident_weights() {
  static auto* r = new ResidentWeights;  // never destroyed (used during exit)
  return *r;
}

// A non-owning byte view of a range, for the page functions of safetensors.h
// (which check that it lies inside a live file mapping before touching it).
torch::Tensor byte_view(const std::pair<void*, int64_t>& range) {
  return torch::from_blob(range.first, {range.second}, torch::kUInt8);
}

// WeightTarget::as_stored: the dtypes layers can compute from (converted on use).
bool keeps_stored_dtype(const torch::Tensor& source) {
  const auto t = source.scalar_type();
  return source.device().is_cpu() &&
         (t == torch::kFloat16 || t == torch::kBFloat16 || t == torch::kFloat32);
}

// The source itself becomes the parameter. Its pages are read in now, in one
// system call, rather than one page fault at a time during the first step.
void keep_as_stored(Assignment& a) {
  torch::Tensor t = a.source.contiguous();
  prefault_mapped_pages(t);
  a.param.set_data(t);
}

}  // namespace

void load_weights(torch::nn::Module& module, const TensorMap& weights, const std::string& what,
                  const WeightTarget& target) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> missing, mismatched;
  std::set<std::string> used;
  std::vector<Assignment> items;
  for (auto& param : module.named_parameters(/*recurse=*/true)) {
    auto it = weights.find(param.key());
    if (it == weights.end()) {
      missing.push_back(param.key());
      continue;
    }
    used.insert(param.key());
    const auto& src = it->second;
    if (src.sizes() != param.value().sizes()) {
      std::string name = param.key();
      if (target.file_key) {
        const std::string in_file = target.file_key(src);
        if (!in_file.empty() && in_file != name) name = in_file + " -> " + name;
      }
      mismatched.push_back(name + " (expected " + shape_string(param.value().sizes()) + ", found " +
                           shape_string(src.sizes()) + ")");
      continue;
    }
    items.push_back({param.value(), src, target.device.value_or(param.value().device()),
                     target.dtype.value_or(param.value().scalar_type()), target.channels_last});
  }
  std::vector<std::string> unexpected;
  for (const auto& kv : weights)
    if (!used.count(kv.first)) unexpected.push_back(kv.first);
  if (missing.empty() && mismatched.empty() && unexpected.empty()) {
    std::vector<Assignment> staged, cpu;
    const bool as_stored =
        target.as_stored && target.dtype && target.device.value_or(torch::kCPU).is_cpu();
    for (auto& a : items) {
      if (as_stored && keeps_stored_dtype(a.source)) {
        keep_as_stored(a);
      } else if (a.device.is_cuda() && a.source.device().is_cpu()) {
        staged.push_back(a);
      } else if (a.device.is_cpu() && a.source.device().is_cpu()) {
        cpu.push_back(a);
      } else {
        a.param.set_data(in_layout(a.source.to(a.device, a.dtype), a));
      }
    }
    // One conversion straight into the target (a copy even when nothing
    // changes, so that the file's pages can be let go).
    if (!cpu.empty()) load_cpu(cpu);
    // Tensors used as they are stay views into their GPU chunk (fully used by
    // live parameters); tensors converted (dtype or channels_last) go through
    // chunks of their own that are freed once converted.
    std::vector<Assignment> as_is, converted;
    for (auto& a : staged)
      (a.source.scalar_type() == a.dtype && !(a.channels_last && a.source.dim() == 4) ? as_is
                                                                                      : converted)
          .push_back(a);
    if (!as_is.empty()) upload_staged(as_is);
    if (!converted.empty()) upload_staged(converted);
    if (as_stored) {
      nn::set_compute_dtype(module, *target.dtype);
      auto& r = resident_weights();
      std::lock_guard<std::mutex> lock(r.mutex);
      auto& ranges = r.ranges[&module];
      ranges.clear();
      for (const auto& a : items) {
        const torch::Tensor& p = a.param;
        if (is_file_mapped(p)) ranges.emplace_back(p.data_ptr(), static_cast<int64_t>(p.nbytes()));
      }
      r.current = &module;  // its pages were just read in
    }
    return;
  }

  // One line, but complete enough to act on: the first few keys of each kind.
  std::ostringstream msg;
  msg << what << ": weights do not match the model architecture:";
  auto list = [&](const char* label, const std::vector<std::string>& keys) {
    if (keys.empty()) return;
    msg << " " << keys.size() << " " << label << " (";
    for (size_t i = 0; i < keys.size() && i < 5; ++i) msg << (i ? ", " : "") << keys[i];
    if (keys.size() > 5) msg << ", ...";
    msg << ");";
  };
  list("wrong shape", mismatched);
  list("missing", missing);
  list("unexpected", unexpected);
  std::string text = msg.str();
  text.pop_back();
  throw Error(text);
}

void make_weights_resident(const torch::nn::Module& module) {
  auto& r = resident_weights();
  std::lock_guard<std::mutex> lock(r.mutex);
  const auto mine = r.ranges.find(&module);
  if (mine == r.ranges.end() || r.current == &module) return;
  if (const auto other = r.ranges.find(r.current); other != r.ranges.end())
    for (const auto& range : other->second) release_mapped_pages(byte_view(range));
  for (const auto& range : mine->second) prefault_mapped_pages(byte_view(range));
  r.current = &module;
}

std::vector<std::pair<std::string, torch::Tensor>> named_tensors(torch::nn::Module& module,
                                                                 const std::string& prefix,
                                                                 torch::ScalarType dtype) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : module.named_parameters()) {
    out.emplace_back(prefix + p.key(), p.value().detach().to(dtype).contiguous());
  }
  return out;
}

}  // namespace sdgen
