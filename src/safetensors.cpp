#include "sdgen/safetensors.h"

#include <mutex>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "formats/file_map.h"
#include "sdgen/error.h"

namespace sdgen {

namespace {

constexpr std::pair<DType, torch::ScalarType> kScalarTypes[] = {
    {DType::F32, torch::kFloat32}, {DType::F16, torch::kFloat16}, {DType::BF16, torch::kBFloat16},
    {DType::F64, torch::kFloat64}, {DType::I64, torch::kInt64},   {DType::I32, torch::kInt32},
    {DType::U8, torch::kUInt8},    {DType::I16, torch::kInt16},   {DType::I8, torch::kInt8},
    {DType::BOOL, torch::kBool},
};

}  // namespace

torch::ScalarType to_scalar_type(DType dtype) {
  for (const auto& [d, scalar] : kScalarTypes)
    if (d == dtype) return scalar;
  throw Error("internal: unknown dtype");
}
DType from_scalar_type(torch::ScalarType type) {
  for (const auto& [d, scalar] : kScalarTypes)
    if (scalar == type) return d;
  throw Error(std::string("cannot store tensors of type ") + c10::toString(type) +
              " in safetensors");
}

namespace {

// Address ranges of the live read-only file mappings, so that
// release_mapped_pages() only ever drops pages of such a mapping. Never
// destroyed: mappings held by static objects are unregistered during exit.
std::mutex& mappings_mutex() {
  static auto* mutex = new std::mutex;
  return *mutex;
}
std::map<uintptr_t, uintptr_t>& mappings() {
  static auto* ranges = new std::map<uintptr_t, uintptr_t>;  // begin -> end
  return *ranges;
}

}  // namespace

// A read-only memory mapping (or an owned buffer for from_bytes).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    const FileMap map = map_file_read_only(path);
    data_ = map.data;
    size_ = map.size;
    if (data_ != nullptr) {
      mapped_ = true;
      // Weights are read front to back, once.
      ::madvise(const_cast<uint8_t*>(data_), size_, MADV_SEQUENTIAL);
      std::lock_guard<std::mutex> lock(mappings_mutex());
      mappings()[reinterpret_cast<uintptr_t>(data_)] = reinterpret_cast<uintptr_t>(data_) + size_;
    }
  }
  // In-memory copy of `bytes` (tests, fuzzers).
  MappedFile(std::string bytes, bool /*in_memory*/) : buffer_(std::move(bytes)) {
    data_ = reinterpret_cast<const uint8_t*>(buffer_.data());
    size_ = buffer_.size();
  }
  ~MappedFile() {
    if (!mapped_) return;
    {
      std::lock_guard<std::mutex> lock(mappings_mutex());
      mappings().erase(reinterpret_cast<uintptr_t>(data_));
    }
    unmap_file({data_, size_});
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  std::string buffer_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  bool mapped_ = false;
};

SafeTensorsFile::SafeTensorsFile(const std::string& path) : path_(path) {
  if (!std::filesystem::exists(path)) throw Error(path + ": file not found");
  file_ = std::make_shared<MappedFile>(path);
  parse();
}

SafeTensorsFile SafeTensorsFile::from_bytes(const std::string& bytes, const std::string& label) {
  SafeTensorsFile f;
  f.path_ = label;
  f.file_ = std::make_shared<MappedFile>(bytes, true);
  f.parse();
  return f;
}

uint64_t SafeTensorsFile::file_size() const { return file_->size(); }

void SafeTensorsFile::parse() {
  SafeTensorsHeader header = parse_safetensors_header(file_->data(), file_->size(), path_);
  data_start_ = header.data_start;
  tensors_ = std::move(header.tensors);
  metadata_ = std::move(header.metadata);
}

bool SafeTensorsFile::contains(const std::string& name) const { return tensors_.count(name) > 0; }

const TensorInfo& SafeTensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(path_ + ": no tensor named '" + name + "'");
  return it->second;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

torch::Tensor SafeTensorsFile::tensor(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const auto options = torch::TensorOptions().dtype(to_scalar_type(ti.dtype));
  if (ti.numel() == 0) return torch::empty(ti.shape, options);
  auto* ptr = const_cast<uint8_t*>(file_->data() + data_start_ + ti.begin);
  std::shared_ptr<MappedFile> keep = file_;
  // Misaligned data (offsets are not required to be aligned) is copied once.
  if (reinterpret_cast<uintptr_t>(ptr) % dtype_size(ti.dtype) != 0) {
    auto out = torch::empty(ti.shape, options);
    std::memcpy(out.data_ptr(), ptr, ti.end - ti.begin);
    return out;
  }
  return torch::from_blob(
      ptr, ti.shape, [keep](void*) mutable { keep.reset(); }, options);
}

namespace {

// [first, last) page-aligned range of `tensor` when it lies inside one live
// file mapping (with the registry locked by the caller); {0, 0} otherwise.
std::pair<uintptr_t, uintptr_t> mapped_range(const torch::Tensor& tensor, bool inner) {
  if (!tensor.defined() || !tensor.device().is_cpu() || !tensor.is_contiguous()) return {0, 0};
  const auto begin = reinterpret_cast<uintptr_t>(tensor.data_ptr());
  const auto end = begin + tensor.nbytes();
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  auto it = mappings().upper_bound(begin);
  if (it == mappings().begin()) return {0, 0};
  --it;
  if (begin < it->first || end > it->second) return {0, 0};  // not inside one file mapping
  // Releasing must not touch pages shared with neighbours (inner); reading
  // may cover them (outer).
  const uintptr_t first = inner ? (begin + page - 1) / page * page : begin / page * page;
  const uintptr_t last =
      inner ? end / page * page : std::min(it->second, (end + page - 1) / page * page);
  return last > first ? std::pair{first, last} : std::pair<uintptr_t, uintptr_t>{0, 0};
}

}  // namespace

void prefault_mapped_pages(const torch::Tensor& tensor) {
#ifdef MADV_POPULATE_READ
  std::lock_guard<std::mutex> lock(mappings_mutex());
  const auto [first, last] = mapped_range(tensor, /*inner=*/false);
  // One system call instead of a page fault per 4 KiB page (faults are
  // expensive in virtual machines). Older kernels reject it: then the pages
  // simply fault in as they are read.
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_POPULATE_READ);
#else
  (void)tensor;
#endif
}

bool is_file_mapped(const torch::Tensor& tensor) {
  if (tensor.defined() && tensor.numel() == 0) return false;
  std::lock_guard<std::mutex> lock(mappings_mutex());
  const auto [first, last] = mapped_range(tensor, /*inner=*/false);
  return last > first;
}

void release_mapped_pages(const torch::Tensor& tensor) {
  std::lock_guard<std::mutex> lock(mappings_mutex());
  const auto [first, last] = mapped_range(tensor, /*inner=*/true);
  // A private, read-only file mapping: dropped pages are read again from the
  // file if anything touches them later, so this only lowers resident memory.
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, torch::Tensor>> sorted = tensors;
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::vector<torch::Tensor> data;
  for (size_t i = 0; i < sorted.size(); ++i) {
    const auto& [name, t] = sorted[i];
    if (i > 0 && name == sorted[i - 1].first)
      throw Error(path + ": duplicate tensor name '" + name + "'");
    auto c = t.detach().to(torch::kCPU).contiguous();
    const DType dtype = from_scalar_type(c.scalar_type());
    const uint64_t bytes = static_cast<uint64_t>(c.numel()) * dtype_size(dtype);
    header[name] = {{"dtype", dtype_name(dtype)},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(c);
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');  // keep tensor data 8-byte aligned
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    if (!out) throw Error(path + ": cannot write (" + std::strerror(errno) + ")");
    uint64_t n = text.size();
    char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    out.write(len, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& c : data)
      out.write(static_cast<const char*>(c.data_ptr()),
                static_cast<std::streamsize>(c.numel() * c.element_size()));
    out.flush();
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      throw Error(path + ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(path + ": cannot rename temporary file into place: " + std::strerror(errno));
  }
}

}  // namespace sdgen
