#pragma once

// The torch-free part of the safetensors format: dtypes and the validation of
// the 8-byte header length + JSON header (tensor table and metadata) against
// the size of the data that follows. SafeTensorsFile (safetensors.h) maps a
// file and builds on this; fuzzers call parse_safetensors_header directly.

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sdgen {

enum class DType { F32, F16, BF16, F64, I64, I32, U8, I16, I8, BOOL };

// Parses "F32", "F16", ...; throws Error for anything else.
DType dtype_from_string(const std::string& name);
const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t numel() const;
};

struct SafeTensorsHeader {
  uint64_t data_start = 0;  // 8 + header length: where the data section begins
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
};

// Header larger than this is rejected before it is read (the format's own
// reference implementation uses 100 MB).
constexpr uint64_t kMaxSafeTensorsHeaderBytes = 100ull * 1024 * 1024;

// Validates the whole file image `data` (size bytes): header length, JSON,
// every entry's dtype, shape and offsets (inside the data section, matching
// dtype x shape, not overlapping). Throws Error "<label>: not a valid
// safetensors file: ..." naming the tensor at fault.
SafeTensorsHeader parse_safetensors_header(const uint8_t* data, uint64_t size,
                                           const std::string& label);

}  // namespace sdgen
