#pragma once

// A reader and writer for the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header mapping tensor names to {dtype, shape, data_offsets},
// then the raw little-endian tensor bytes. Nothing in the file is executed.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "sdgen/safetensors_header.h"  // DType, TensorInfo, the header parser

namespace sdgen {

torch::ScalarType to_scalar_type(DType dtype);
DType from_scalar_type(torch::ScalarType type);

class MappedFile;

// A validated, memory-mapped safetensors file. Tensors returned by tensor()
// alias the mapping (no copy) and keep it alive on their own.
class SafeTensorsFile {
 public:
  // Header larger than this is rejected before it is read (the format's own
  // reference implementation uses 100 MB).
  static constexpr uint64_t kMaxHeaderBytes = kMaxSafeTensorsHeaderBytes;

  // Maps and validates `path`; throws Error naming the file and the problem.
  explicit SafeTensorsFile(const std::string& path);
  // Validates an in-memory buffer (used by tests and fuzzers); the bytes are copied.
  static SafeTensorsFile from_bytes(const std::string& bytes, const std::string& label);

  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws Error if absent
  std::vector<std::string> names() const;                 // sorted
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const;

  // Zero-copy CPU view of the stored bytes with the stored dtype and shape.
  torch::Tensor tensor(const std::string& name) const;

 private:
  SafeTensorsFile() = default;
  void parse();

  std::string path_;
  std::shared_ptr<MappedFile> file_;
  uint64_t data_start_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// When `tensor` lies inside the read-only mapping of a SafeTensorsFile, tells
// the kernel its pages are no longer needed (they are read back from the file
// if touched again). Used after weights were copied out of a file, so a
// loaded model does not also keep the file's pages resident. No-op otherwise.
void release_mapped_pages(const torch::Tensor& tensor);
// Reads the pages of `tensor` (inside a SafeTensorsFile mapping) in at once,
// before it is converted or copied. No-op otherwise.
void prefault_mapped_pages(const torch::Tensor& tensor);
// True when `tensor` is contiguous and lies inside the read-only mapping of a
// live SafeTensorsFile (it then keeps that mapping alive).
bool is_file_mapped(const torch::Tensor& tensor);

// Writes tensors (any device, contiguous or not) as a safetensors file, keys
// sorted, data laid out in key order. Written to a temporary file and renamed,
// so a failure never leaves a partial file behind.
void write_safetensors(const std::string& path,
                       const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace sdgen
