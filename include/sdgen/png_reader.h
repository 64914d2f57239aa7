#pragma once

// PNG decoding from bytes and PNG text chunks, without libtorch (read_png and
// write_png in image_io.h use them); split out so that fuzzers can feed them
// untrusted bytes.

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace sdgen {

// Text chunks as (keyword, text) pairs in file order, both UTF-8, e.g.
// {"parameters", "..."} for A1111. A keyword may appear more than once.
using PngText = std::vector<std::pair<std::string, std::string>>;

struct DecodedPng {
  int width = 0, height = 0, channels = 0;  // channels as stored (1..4)
  std::vector<uint8_t> pixels;              // height * width * channels bytes, row-major
  PngText text;                             // tEXt, zTXt and iTXt chunks found in the file
};

// Decodes PNG `bytes` (stb_image) and collects their text chunks
// (png_text_chunks). Throws Error "<label>: not a PNG file" or
// "<label>: cannot decode PNG (...)", or png_text_chunks' errors.
DecodedPng decode_png(const std::string& bytes, const std::string& label);

// What the compressed text chunks (zTXt, compressed iTXt) of one file may
// inflate to, all together: far more than any prompt, far less than a zip bomb.
constexpr size_t kMaxPngTextInflated = size_t{16} << 20;

// The text chunks (tEXt, zTXt, iTXt) of PNG `bytes`, in file order, up to IEND
// or the first chunk that runs past the end (decoding is not attempted,
// checksums are not checked), converted to UTF-8:
// - iTXt text is UTF-8 already (invalid sequences become U+FFFD);
// - tEXt and zTXt text is Latin-1 by the PNG spec, but older sdgen versions
//   and several other tools wrote raw UTF-8 there, so text that is valid UTF-8
//   is taken as UTF-8 and anything else as Latin-1 (see latin1_or_utf8).
// Chunks without a keyword are skipped. Throws Error "<label>: cannot read PNG
// text chunk ..." naming the chunk, its keyword and position when compressed
// text is corrupt, uses an unknown compression method, or would inflate past
// kMaxPngTextInflated.
PngText png_text_chunks(const std::string& bytes, const std::string& label);

// One PNG chunk: length, type, data, CRC-32 over type and data.
std::string png_chunk(const std::string& type, const std::string& data);

// The chunk that stores text entry (key, value) (UTF-8 strings) as Pillow's
// PngInfo.add_text(key, value) writes it: tEXt when the value encodes to
// Latin-1, otherwise an uncompressed iTXt (see png_reader.cpp). Throws Error
// when `key` is not 1-79 Latin-1 characters.
std::string png_text_chunk(const std::string& key, const std::string& value);

}  // namespace sdgen
