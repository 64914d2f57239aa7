// libFuzzer target: the safetensors header and tensor-table parser
// (parse_safetensors_header, which SafeTensorsFile runs on every file it maps).
// Any input must either throw sdgen::Error or give a table whose every tensor
// lies inside the data section with the size its dtype and shape need.
#include <cstdint>
#include <cstdlib>

#include "sdgen/error.h"
#include "sdgen/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sdgen::SafeTensorsHeader header;
  try {
    header = sdgen::parse_safetensors_header(data, size, "fuzz.safetensors");
  } catch (const sdgen::Error&) {
    return 0;
  }
  if (header.data_start < 8 || header.data_start > size) std::abort();
  const uint64_t data_size = size - header.data_start;
  uint64_t last_end = 0;
  (void)last_end;
  for (const auto& [name, info] : header.tensors) {
    if (name != info.name || info.begin > info.end || info.end > data_size) std::abort();
    if (info.end - info.begin != info.numel() * sdgen::dtype_size(info.dtype)) std::abort();
    for (int64_t d : info.shape)
      if (d < 0) std::abort();
    if (info.end > info.begin) {
      // What SafeTensorsFile::tensor() reads: ASan checks both ends of the range.
      volatile uint8_t first = data[header.data_start + info.begin];
      volatile uint8_t last = data[header.data_start + info.end - 1];
      (void)first;
      (void)last;
    }
  }
  return 0;
}
