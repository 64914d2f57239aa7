#pragma once

// Read-only memory mappings of whole files, shared by the safetensors reader
// (src/safetensors.cpp) and the checkpoint converter (torch_convert.cpp).

#include <cstdint>
#include <string>

namespace sdgen {

struct FileMap {
  const uint8_t* data = nullptr;  // nullptr for an empty file
  uint64_t size = 0;
};

// Maps `path` read-only (MAP_PRIVATE). Throws Error naming the path when it
// cannot be opened, is not a regular file (a FIFO is refused at once, not
// waited on) or cannot be mapped.
FileMap map_file_read_only(const std::string& path);
// Undoes map_file_read_only (nothing for an empty file).
void unmap_file(const FileMap& map);

}  // namespace sdgen
