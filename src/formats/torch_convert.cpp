// `sdgen convert`: a torch.save checkpoint to a safetensors file, streamed.
// The safetensors layout follows the format's specification and sdgen's own
// writer (src/safetensors.cpp, write_safetensors): 8-byte little-endian header
// length, compact JSON with names sorted, padded with spaces to 8 bytes, the
// data in name order.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/file_map.h"
#include "sdgen/error.h"
#include "sdgen/torch_checkpoint.h"

namespace fs = std::filesystem;

namespace sdgen {

namespace {

constexpr uint64_t kChunkBytes = 8u << 20;

uint32_t float_bits(float f) {
  uint32_t u = 0;
  std::memcpy(&u, &f, 4);
  return u;
}
float bits_float(uint32_t u) {
  float f = 0;
  std::memcpy(&f, &u, 4);
  return f;
}

// The input, mapped read-only; pages already copied are handed back to the
// kernel so that resident memory stays small whatever the file's size.
class CheckpointMapping {
 public:
  explicit CheckpointMapping(const std::string& path) : map_(map_file_read_only(path)) {}
  ~CheckpointMapping() { unmap_file(map_); }
  CheckpointMapping(const CheckpointMapping&) = delete;
  CheckpointMapping& operator=(const CheckpointMapping&) = delete;
  const uint8_t* data() const { return map_.data; }
  uint64_t size() const { return map_.size; }
  // Drops the whole pages inside [begin, end) (they are read again if touched).
  void release(uint64_t begin, uint64_t end) const {
    static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t first = (begin + page - 1) / page * page, last = end / page * page;
    if (last > first)
      ::madvise(const_cast<uint8_t*>(map_.data) + first, last - first, MADV_DONTNEED);
  }

 private:
  FileMap map_;
};

// The output: a temporary file beside the target, removed unless committed.
class TempOutput {
 public:
  explicit TempOutput(const std::string& target) : target_(target) {
    tmp_ = target + ".tmp" + std::to_string(::getpid());
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(target + ": cannot write: " + std::strerror(errno));
  }
  ~TempOutput() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }
  TempOutput(const TempOutput&) = delete;
  TempOutput& operator=(const TempOutput&) = delete;
  void write(const void* data, uint64_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, std::min<uint64_t>(n, 1u << 30));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw Error(target_ + ": write failed: " + std::strerror(w < 0 ? errno : ENOSPC));
      p += w;
      n -= static_cast<uint64_t>(w);
    }
  }
  void commit() {
    if (::close(fd_) != 0) {
      fd_ = -1;
      throw Error(target_ + ": write failed: " + std::strerror(errno));
    }
    fd_ = -1;
    if (std::rename(tmp_.c_str(), target_.c_str()) != 0)
      throw Error(target_ +
                  ": cannot rename the temporary file into place: " + std::strerror(errno));
    committed_ = true;
  }

 private:
  std::string target_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
};

bool is_float(DType d) {
  return d == DType::F32 || d == DType::F16 || d == DType::BF16 || d == DType::F64;
}

float load_float(DType d, const uint8_t* p) {
  switch (d) {
    case DType::F16: {
      uint16_t h = 0;
      std::memcpy(&h, p, 2);
      return half_bits_to_float(h);
    }
    case DType::BF16: {
      uint16_t h = 0;
      std::memcpy(&h, p, 2);
      return bfloat16_bits_to_float(h);
    }
    case DType::F64: {
      double v = 0;
      std::memcpy(&v, p, 8);
      return static_cast<float>(v);  // torch too goes double -> float -> half
    }
    default: {
      float v = 0;
      std::memcpy(&v, p, 4);
      return v;
    }
  }
}

// `n` elements of `from` at `src` as `to` at `dst`.
void convert_elements(DType from, const uint8_t* src, DType to, uint8_t* dst, uint64_t n) {
  const uint64_t in = dtype_size(from), out = dtype_size(to);
  for (uint64_t i = 0; i < n; ++i, src += in, dst += out) {
    if (from == DType::F64 && to == DType::F32) {
      double v = 0;
      std::memcpy(&v, src, 8);
      const float f = static_cast<float>(v);
      std::memcpy(dst, &f, 4);
      continue;
    }
    const float f = load_float(from, src);
    if (to == DType::F32) {
      std::memcpy(dst, &f, 4);
    } else {
      const uint16_t h = to == DType::F16 ? float_to_half_bits(f) : float_to_bfloat16_bits(f);
      std::memcpy(dst, &h, 2);
    }
  }
}

// Streams one tensor: contiguous runs straight from the mapping, views
// gathered element run by element run, `chunk` elements at a time.
void write_tensor(const CheckpointMapping& in, const CheckpointTensor& t, DType to,
                  TempOutput& out) {
  const uint64_t elem = dtype_size(t.dtype), numel = t.numel();
  if (numel == 0) return;
  const uint8_t* base = in.data() + t.storage_begin;
  const bool same = to == t.dtype;
  const uint64_t chunk = std::max<uint64_t>(1, kChunkBytes / std::max(elem, dtype_size(to)));
  std::vector<uint8_t> buffer;
  if (t.contiguous()) {
    const uint8_t* src = base + t.storage_offset * elem;
    for (uint64_t done = 0; done < numel; done += chunk) {
      const uint64_t n = std::min(chunk, numel - done);
      const uint8_t* p = src + done * elem;
      if (same) {
        out.write(p, n * elem);
      } else {
        buffer.resize(n * dtype_size(to));
        convert_elements(t.dtype, p, to, buffer.data(), n);
        out.write(buffer.data(), buffer.size());
      }
      in.release(static_cast<uint64_t>(p - in.data()),
                 static_cast<uint64_t>(p - in.data()) + n * elem);
    }
    return;
  }
  // A view: walk the index space in row-major order, the innermost dimension
  // in runs (copied whole when its stride is 1), `chunk` elements at a time.
  const size_t dims = t.shape.size();
  const uint64_t inner = static_cast<uint64_t>(t.shape[dims - 1]);
  const uint64_t inner_stride = static_cast<uint64_t>(t.stride[dims - 1]);
  std::vector<uint64_t> index(dims, 0);  // the outer dimensions' position
  uint64_t j = 0;                        // the position within the innermost run
  std::vector<uint8_t> gathered;
  gathered.reserve(chunk * elem);
  for (uint64_t done = 0; done < numel;) {
    gathered.clear();
    uint64_t n = 0;
    while (n < chunk && done + n < numel) {
      uint64_t offset = t.storage_offset + j * inner_stride;
      for (size_t d = 0; d + 1 < dims; ++d) offset += index[d] * static_cast<uint64_t>(t.stride[d]);
      const uint64_t run = std::min(chunk - n, inner - j);
      const uint8_t* p = base + offset * elem;
      if (inner_stride == 1) {
        gathered.insert(gathered.end(), p, p + run * elem);
      } else {
        for (uint64_t i = 0; i < run; ++i, p += inner_stride * elem)
          gathered.insert(gathered.end(), p, p + elem);
      }
      n += run;
      j += run;
      if (j < inner) continue;
      j = 0;
      for (size_t d = dims - 1; d-- > 0;) {  // advance the outer index
        if (++index[d] < static_cast<uint64_t>(t.shape[d])) break;
        index[d] = 0;
      }
    }
    if (same) {
      out.write(gathered.data(), gathered.size());
    } else {
      buffer.resize(n * dtype_size(to));
      convert_elements(t.dtype, gathered.data(), to, buffer.data(), n);
      out.write(buffer.data(), buffer.size());
    }
    done += n;
  }
  in.release(t.storage_begin, t.storage_begin + t.storage_bytes);
}

}  // namespace

uint16_t float_to_half_bits(float value) {
  const uint32_t x = float_bits(value);
  const uint32_t sign = (x >> 16) & 0x8000;
  const uint32_t abs = x & 0x7fffffff;
  if (abs > 0x7f800000) return static_cast<uint16_t>(sign | 0x7e00);   // NaN
  if (abs >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // rounds past 65504
  if (abs < 0x38800000) {  // below 2^-14: a subnormal half (or zero)
    if (abs < 0x33000000) return static_cast<uint16_t>(sign);
    const uint32_t e = abs >> 23, m = (abs & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // value * 2^24 = m * 2^(e - 126)
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t rebased = abs - 0x38000000;  // exponent bias 127 -> 15
  uint32_t h = rebased >> 13;
  const uint32_t rem = rebased & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float half_bits_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000) << 16;
  uint32_t e = (bits >> 10) & 0x1f, m = bits & 0x3ff;
  if (e == 0x1f) return bits_float(sign | 0x7f800000 | (m << 13));
  if (e == 0) {
    if (m == 0) return bits_float(sign);
    e = 113;  // normalise the subnormal
    while ((m & 0x400) == 0) {
      m <<= 1;
      --e;
    }
    return bits_float(sign | (e << 23) | ((m & 0x3ff) << 13));
  }
  return bits_float(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t float_to_bfloat16_bits(float value) {
  if (std::isnan(value)) return 0x7fc0;
  const uint32_t u = float_bits(value);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

float bfloat16_bits_to_float(uint16_t bits) {
  return bits_float(static_cast<uint32_t>(bits) << 16);
}

bool is_pickle_file_name(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext == ".ckpt" || ext == ".pt" || ext == ".pth" || ext == ".bin";
}

std::string convert_command_hint(const std::string& path) {
  fs::path out = fs::path(path).replace_extension(".safetensors");
  if (out.filename() == "pytorch_model.safetensors") out.replace_filename("model.safetensors");
  return "convert it once with: sdgen convert '" + path + "' -o '" + out.string() + "'";
}

std::string pickle_refusal(const std::string& path, const std::string& what) {
  return path + ": pickled " + what + " are not loaded (unpickling can run code); " +
         convert_command_hint(path);
}

ConvertReport convert_torch_checkpoint(const std::string& input, const std::string& output,
                                       const ConvertOptions& options) {
  std::error_code ec;
  if (!fs::exists(input, ec)) throw Error(input + ": file not found");
  if (fs::is_directory(input, ec)) throw Error(input + ": is a folder, not a checkpoint file");
  if (fs::exists(output, ec)) {
    if (fs::equivalent(input, output, ec)) throw Error(output + ": is the input file");
    if (!options.overwrite) throw Error(output + ": already exists (give --force to replace it)");
  }
  const CheckpointMapping in(input);
  TorchCheckpoint checkpoint = read_torch_checkpoint(in.data(), in.size(), input);
  std::sort(checkpoint.tensors.begin(), checkpoint.tensors.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });

  ConvertReport report;
  nlohmann::json header = nlohmann::json::object();
  if (!checkpoint.metadata.empty()) header["__metadata__"] = checkpoint.metadata;
  uint64_t offset = 0;
  const uint64_t limit = 16 * in.size() + (uint64_t{1} << 30);
  std::vector<DType> written;
  for (const auto& t : checkpoint.tensors) {
    const DType to = options.dtype && is_float(t.dtype) ? *options.dtype : t.dtype;
    const uint64_t bytes = t.numel() * dtype_size(to);  // no overflow: checked by the reader
    // Broadcast views (stride 0) can describe far more data than the file
    // holds; a sane checkpoint never grows more than fp16 -> fp32 does.
    if (bytes > limit - offset)
      throw Error(input + ": tensor '" + t.name + "' would make the output larger than " +
                  "16 times the checkpoint (broadcast views?)");
    header[t.name] = {
        {"dtype", dtype_name(to)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    written.push_back(to);
    report.tensors.emplace_back(t.name, to);
  }
  // Names and metadata come from the pickle: invalid UTF-8 is replaced, not fatal.
  std::string text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  while (text.size() % 8 != 0) text.push_back(' ');

  const fs::path parent = fs::path(output).parent_path();
  if (!parent.empty() && !fs::is_directory(parent, ec))
    throw Error(output + ": folder " + parent.string() + " does not exist");
  TempOutput out(output);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>((text.size() >> (8 * i)) & 0xff);
  out.write(len, 8);
  out.write(text.data(), text.size());
  for (size_t i = 0; i < checkpoint.tensors.size(); ++i)
    write_tensor(in, checkpoint.tensors[i], written[i], out);
  out.commit();
  report.metadata = std::move(checkpoint.metadata);
  report.dropped = std::move(checkpoint.dropped);
  report.bytes = 8 + text.size() + offset;
  return report;
}

}  // namespace sdgen
