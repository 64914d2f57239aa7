#pragma once

// PNG decoding from bytes, without libtorch (read_png in image_io.h wraps it
// into a tensor); split out so that fuzzers can feed it untrusted bytes.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sdgen {

// Text chunks (keyword, text) stored as PNG tEXt, e.g. {"parameters", "..."} for A1111.
using PngText = std::vector<std::pair<std::string, std::string>>;

struct DecodedPng {
  int width = 0, height = 0, channels = 0;  // channels as stored (1..4)
  std::vector<uint8_t> pixels;              // height * width * channels bytes, row-major
  PngText text;                             // tEXt chunks found in the file
};

// Decodes PNG `bytes` (stb_image) and collects their tEXt chunks. Throws Error
// "<label>: not a PNG file" or "<label>: cannot decode PNG (...)".
DecodedPng decode_png(const std::string& bytes, const std::string& label);

// The tEXt chunks of PNG `bytes`, in file order, up to IEND or the first chunk
// that runs past the end (decoding is not attempted, checksums are not checked).
PngText png_text_chunks(const std::string& bytes);

}  // namespace sdgen
