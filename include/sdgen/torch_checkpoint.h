#pragma once

// PyTorch checkpoints (torch.save's zip format, since torch 1.6) read without
// running any of their code, and their conversion to safetensors
// (`sdgen convert`). The container is a ZIP archive of STORED entries
// `<prefix>/data.pkl` (the pickled object), `<prefix>/data/<key>` (raw
// little-endian storages) and `<prefix>/version`; the pickle is read by
// sdgen::pickle (pickle.h), which refuses every global torch's weights_only
// loader would refuse. Libtorch-free, so it is fuzzed (fuzz/fuzz_pickle.cpp).

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "sdgen/safetensors_header.h"  // DType

namespace sdgen {

// One entry of a ZIP archive's central directory, validated against the
// archive's size: its data is bytes [offset, offset + size) of the archive.
struct ZipEntry {
  std::string name;
  uint64_t offset = 0;
  uint64_t size = 0;
};

// Reads the central directory (ZIP64 too) of the archive image `data`. Throws
// Error "<label>: ..." for anything malformed, a compressed or encrypted
// entry, or an offset or size outside the archive.
std::vector<ZipEntry> read_zip_entries(const uint8_t* data, uint64_t size,
                                       const std::string& label);

// A tensor of a checkpoint: a view (offset, shape, strides in elements) into
// a storage, whose bytes are [storage_begin, storage_begin + storage_bytes)
// of the file. Validated: every element the view reaches lies in its storage.
struct CheckpointTensor {
  std::string
      name;  // the flattened key ("model.diffusion_model.out.0.weight", "string_to_param.*")
  DType dtype = DType::F32;
  std::vector<int64_t> shape, stride;
  uint64_t storage_offset = 0;  // elements
  std::string storage;          // the archive entry ("archive/data/3")
  uint64_t storage_begin = 0, storage_bytes = 0;
  uint64_t numel() const;
  bool contiguous() const;
};

struct TorchCheckpoint {
  std::vector<CheckpointTensor> tensors;        // in the pickle's order
  std::map<std::string, std::string> metadata;  // strings, numbers and bools, by flattened key
  std::vector<std::string> dropped;  // flattened keys of other entries (None, lists, ...)
};

// Reads the checkpoint image `data` (a whole file): the zip directory, the
// pickle, every tensor's storage. Nested dicts are flattened with "." (a
// top-level "state_dict" dict becomes the top level, as A1111's and
// sd-scripts' loaders take it; the other top-level entries then only give
// metadata). Throws Error "<label>: ..." on anything it cannot read safely.
TorchCheckpoint read_torch_checkpoint(const uint8_t* data, uint64_t size, const std::string& label);

struct ConvertOptions {
  std::optional<DType> dtype;  // F16, BF16 or F32: float tensors converted to it
  bool overwrite = false;      // replace an existing output file
};

struct ConvertReport {
  std::vector<std::pair<std::string, DType>> tensors;  // as written, sorted by name
  std::map<std::string, std::string> metadata;
  std::vector<std::string> dropped;
  uint64_t bytes = 0;  // the output file's size
};

// Converts the checkpoint at `input` to a safetensors file at `output`,
// streaming each tensor from the mapped input to the file in chunks (memory
// stays at a few MB whatever the model's size). Written to a temporary file
// beside `output` and renamed at the end; on any error nothing is left behind.
ConvertReport convert_torch_checkpoint(const std::string& input, const std::string& output,
                                       const ConvertOptions& options = {});

// True for the file extensions of pickled weights (.ckpt .pt .pth .bin).
bool is_pickle_file_name(const std::string& path);
// The advice every loader gives for a pickled file: "convert it once with:
// sdgen convert 'old.ckpt' -o 'old.safetensors'" (a transformers
// pytorch_model.bin becomes model.safetensors, the name sdgen looks for).
std::string convert_command_hint(const std::string& path);
// The loaders' one-line refusal: "<path>: pickled <what> are not loaded
// (unpickling can run code); convert it once with: sdgen convert ...".
// sdgen loads safetensors only (one loading path, mmap, the hashes written
// into PNGs are those of the safetensors file); `sdgen convert` reads
// pickles without running them.
std::string pickle_refusal(const std::string& path, const std::string& what);

// Float conversions as torch's .to(dtype) does them (round to nearest even;
// c10/util/Half.h, c10/util/BFloat16.h), for --dtype.
uint16_t float_to_half_bits(float value);
float half_bits_to_float(uint16_t bits);
uint16_t float_to_bfloat16_bits(float value);
float bfloat16_bits_to_float(uint16_t bits);

}  // namespace sdgen
