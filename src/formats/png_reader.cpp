#include "sdgen/png_reader.h"

#include <zlib.h>

#include <algorithm>
#include <climits>

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#include "stb_image.h"  // a SYSTEM include (CMakeLists.txt): its warnings are not ours

#include "sdgen/error.h"
#include "utf8.h"

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

// ---- writing text chunks --------------------------------------------------------

void put_u32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>((v >> 24) & 0xff));
  out.push_back(static_cast<char>((v >> 16) & 0xff));
  out.push_back(static_cast<char>((v >> 8) & 0xff));
  out.push_back(static_cast<char>(v & 0xff));
}

// UTF-8 `text` as Latin-1 bytes in `out`; false when it has a character
// beyond U+00FF (an invalid UTF-8 sequence reads as U+FFFD, so counts as one).
bool to_latin1(const std::string& text, std::string& out) {
  out.clear();
  for (const char32_t cp : decode_utf8(text)) {
    if (cp > 0xFF) return false;
    out.push_back(static_cast<char>(cp));
  }
  return true;
}

// ---- text chunks (PNG spec 11.3.4: tEXt, zTXt, iTXt) --------------------------

std::string latin1_to_utf8(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (const char c : bytes) append_utf8(static_cast<unsigned char>(c), out);
  return out;
}

// tEXt and zTXt text (and every keyword) is Latin-1 by the spec, and Pillow
// (PngStream.chunk_tEXt) and libpng read it so. But sdgen before iTXt support,
// and several other tools, put raw UTF-8 there. Bytes that are valid UTF-8
// are taken as UTF-8: Latin-1 text is hardly ever also valid UTF-8 once it
// has a non-ASCII byte (it needs a lead byte such as 'Ã' followed by exactly
// the right number of bytes in 0x80-0xBF, which are C1 controls or symbols
// such as '©'), and pure ASCII reads the same either way.
std::string latin1_or_utf8(const std::string& bytes) {
  return valid_utf8(bytes) == bytes ? bytes : latin1_to_utf8(bytes);
}

// Where a text chunk is, for messages: "'zTXt' chunk 'parameters' at byte 33".
std::string chunk_name(const std::string& type, const std::string& keyword, size_t pos) {
  return "'" + type + "' chunk '" + printable(keyword) + "' at byte " + std::to_string(pos);
}

// Inflates the zlib stream `data` (compression method 0, the only one PNG
// defines), taking at most `budget` bytes of output from the file's budget.
// Returns false, with the reason in `why`, on corrupt or truncated data and
// when the budget runs out (Pillow's _safe_zlib_decompress bounds each chunk
// the same way). Bytes after the end of the stream are ignored, as zlib's
// uncompress() and Pillow do.
bool inflate_text(const std::string& data, size_t& budget, std::string& out, std::string& why) {
  z_stream zs{};
  if (inflateInit(&zs) != Z_OK) {
    why = "zlib cannot start";
    return false;
  }
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());  // a chunk is < 4 GiB
  char buffer[16384];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buffer);
    zs.avail_out = sizeof buffer;
    rc = inflate(&zs, Z_NO_FLUSH);
    const size_t got = sizeof buffer - zs.avail_out;
    if (got > budget) {
      why = "the compressed text chunks inflate to more than " +
            std::to_string(kMaxPngTextInflated >> 20) + " MiB";
      inflateEnd(&zs);
      return false;
    }
    budget -= got;
    out.append(buffer, got);
  }
  if (rc != Z_STREAM_END)
    why =
        std::string("corrupt compressed text: ") + (rc == Z_BUF_ERROR ? "truncated"
                                                    : zs.msg          ? zs.msg
                                                             : "zlib error " + std::to_string(rc));
  inflateEnd(&zs);
  return rc == Z_STREAM_END;
}

}  // namespace

PngText png_text_chunks(const std::string& bytes, const std::string& label) {
  PngText text;
  size_t budget = kMaxPngTextInflated;
  size_t pos = 8;
  while (pos + 12 <= bytes.size()) {
    const uint32_t len = get_u32(bytes, pos);
    if (len > bytes.size() - pos - 12) break;
    const std::string type = bytes.substr(pos + 4, 4);
    if (type == "IEND") break;
    const bool is_text = type == "tEXt", is_ztxt = type == "zTXt", is_itxt = type == "iTXt";
    const size_t at = pos;
    pos += 12 + len;
    if (!is_text && !is_ztxt && !is_itxt) continue;
    const std::string data = bytes.substr(at + 8, len);
    const size_t nul = data.find('\0');
    if (nul == std::string::npos || nul == 0) continue;  // no keyword: skipped, as Pillow does
    const std::string keyword = latin1_or_utf8(data.substr(0, nul));
    auto fail = [&](const std::string& why) {
      throw Error(label + ": cannot read PNG text " + chunk_name(type, keyword, at) + " (" + why +
                  ")");
    };
    auto inflated = [&](const std::string& compressed) {
      std::string out, why;
      if (!inflate_text(compressed, budget, out, why)) fail(why);
      return out;
    };
    if (is_text) {  // keyword, NUL, Latin-1 text
      text.emplace_back(keyword, latin1_or_utf8(data.substr(nul + 1)));
    } else if (is_ztxt) {  // keyword, NUL, compression method, zlib stream of Latin-1 text
      const int method = nul + 1 < data.size() ? static_cast<unsigned char>(data[nul + 1]) : 0;
      if (method != 0) fail("unknown compression method " + std::to_string(method));
      text.emplace_back(keyword,
                        latin1_or_utf8(inflated(data.substr(std::min(nul + 2, data.size())))));
    } else {  // keyword, NUL, compression flag, method, language, NUL, keyword, NUL, UTF-8 text
      const size_t lang_end = nul + 3 <= data.size() ? data.find('\0', nul + 3) : std::string::npos;
      const size_t tkey_end =
          lang_end == std::string::npos ? lang_end : data.find('\0', lang_end + 1);
      if (tkey_end == std::string::npos) continue;  // malformed: skipped, as Pillow does
      const int flag = static_cast<unsigned char>(data[nul + 1]),
                method = static_cast<unsigned char>(data[nul + 2]);
      const std::string body = data.substr(tkey_end + 1);
      if (flag > 1) fail("unknown compression flag " + std::to_string(flag));
      if (flag == 1 && method != 0) fail("unknown compression method " + std::to_string(method));
      text.emplace_back(keyword, valid_utf8(flag == 1 ? inflated(body) : body));
    }
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
  out.text = png_text_chunks(bytes, label);  // stb ignores them
  return out;
}

std::string png_chunk(const std::string& type, const std::string& data) {
  std::string out;
  put_u32(out, static_cast<uint32_t>(data.size()));
  const std::string body = type + data;
  out += body;
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
  put_u32(out, static_cast<uint32_t>(crc));
  return out;
}

// As Pillow's PngInfo.add_text(key, value) (PIL/PngImagePlugin.py), which
// A1111's images.save_image_with_geninfo calls for a PNG's "parameters":
//   value.encode("latin-1") works -> tEXt: key + b"\0" + latin-1 value;
//   otherwise add_itxt(key, value) -> iTXt, uncompressed (zip=False):
//     key + b"\0\0\0" + lang + b"\0" + tkey + b"\0" + value.encode("utf-8")
//     with lang = tkey = "" (compression flag 0, method 0, no language, no
//     translated keyword).
// So pure-ASCII text gives the same bytes as sdgen always wrote. A value that
// is not valid UTF-8 (a Python str cannot be) is written with each invalid
// sequence as U+FFFD (decode_utf8), which makes it an iTXt chunk.
std::string png_text_chunk(const std::string& key, const std::string& value) {
  std::string latin1_key, latin1_value;
  if (!to_latin1(key, latin1_key) || latin1_key.empty() || latin1_key.size() > 79)
    throw Error("PNG text keyword must be 1-79 Latin-1 characters: " + key);
  if (to_latin1(value, latin1_value))
    return png_chunk("tEXt", latin1_key + std::string(1, '\0') + latin1_value);
  return png_chunk("iTXt", latin1_key + std::string(5, '\0') + valid_utf8(value));
}

}  // namespace sdgen
