#include "sdgen/png_reader.h"

#include <climits>

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#endif
#include "stb_image.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#include "sdgen/error.h"

namespace sdgen {

namespace {

const char kPngSignature[] = "\x89PNG\r\n\x1a\n";

uint32_t get_u32(const std::string& s, size_t pos) {
  return (static_cast<uint32_t>(static_cast<uint8_t>(s[pos])) << 24) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[pos + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<uint8_t>(s[pos + 2])) << 8) |
         static_cast<uint32_t>(static_cast<uint8_t>(s[pos + 3]));
}

// Bytes from the file (chunk types) made safe for a one-line message.
std::string printable(std::string text) {
  for (char& c : text)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return text;
}

// Checks the chunk layout before stb_image sees the bytes: a chunk whose
// length runs past the end of the file is a truncated (or crafted) file;
// stb_image would first allocate the claimed length (up to 4 GiB for a
// 100-byte file). Also drops empty IDAT chunks (legal, no image data):
// stb_image 2.27 memcpy()s zero bytes to a null buffer when the first IDAT
// chunk is empty, which is undefined behaviour. Returns the bytes to decode:
// `bytes` itself, or `cleaned` when chunks were dropped.
const std::string& checked_chunks(const std::string& bytes, const std::string& label,
                                  std::string& cleaned) {
  bool dropped = false;
  size_t pos = 8, copied = 0;
  while (pos + 8 <= bytes.size()) {
    const uint32_t len = get_u32(bytes, pos);
    const std::string type = bytes.substr(pos + 4, 4);
    if (len > bytes.size() - pos - 8 || bytes.size() - pos - 8 - len < 4)
      throw Error(label + ": cannot decode PNG (truncated: chunk '" + printable(type) +
                  "' at byte " + std::to_string(pos) + " claims " + std::to_string(len) +
                  " bytes, " + std::to_string(bytes.size() - pos) + " left in the file)");
    if (len == 0 && type == "IDAT") {
      dropped = true;
      cleaned.append(bytes, copied, pos - copied);
      copied = pos + 12;
    }
    pos += 12 + len;
    if (type == "IEND") break;
  }
  if (!dropped) return bytes;
  cleaned.append(bytes, copied, std::string::npos);
  return cleaned;
}

// stb_image's reason for the last failure, fit for a one-line message. stb
// returns some failures without setting a reason: the pointer is then null
// (in a fresh thread) and was once passed to std::string (a crash on a
// crafted PNG). Some reasons embed chunk-type bytes from the file.
std::string failure_reason() {
  const char* reason = stbi_failure_reason();
  const std::string text = printable(reason ? reason : "");
  return text.empty() ? "corrupt or unsupported PNG data" : text;
}

}  // namespace

PngText png_text_chunks(const std::string& bytes) {
  PngText text;
  size_t pos = 8;
  while (pos + 12 <= bytes.size()) {
    const uint32_t len = get_u32(bytes, pos);
    if (len > bytes.size() - pos - 12) break;
    const std::string type = bytes.substr(pos + 4, 4);
    if (type == "tEXt") {
      const std::string data = bytes.substr(pos + 8, len);
      const size_t nul = data.find('\0');
      if (nul != std::string::npos && nul > 0)
        text.emplace_back(data.substr(0, nul), data.substr(nul + 1));
    }
    if (type == "IEND") break;
    pos += 12 + len;
  }
  return text;
}

DecodedPng decode_png(const std::string& bytes, const std::string& label) {
  if (bytes.size() < 8 || bytes.compare(0, 8, kPngSignature, 8) != 0)
    throw Error(label + ": not a PNG file");
  if (bytes.size() > static_cast<size_t>(INT_MAX))
    throw Error(label + ": cannot decode PNG (file larger than 2 GiB)");
  std::string cleaned;
  const std::string& input = checked_chunks(bytes, label, cleaned);
  int w = 0, h = 0, c = 0;
  stbi_uc* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(input.data()),
                                        static_cast<int>(input.size()), &w, &h, &c, 0);
  if (!data) throw Error(label + ": cannot decode PNG (" + failure_reason() + ")");
  DecodedPng out;
  out.width = w;
  out.height = h;
  out.channels = c;
  out.pixels.assign(
      data, data + static_cast<size_t>(w) * static_cast<size_t>(h) * static_cast<size_t>(c));
  stbi_image_free(data);
  out.text = png_text_chunks(bytes);  // stb ignores them
  return out;
}

}  // namespace sdgen
