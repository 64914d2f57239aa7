// libFuzzer target: what sdgen reads from a PNG (--from-png, --show-params,
// init images): the decoder (stb_image), the text chunk reader (tEXt, zTXt,
// iTXt) and A1111's "parameters" text with the settings read from it. Inputs
// starting with the PNG signature go through the decoder; anything else is
// taken as a parameters text. Also checks that every field value sdgen writes
// reads back unchanged, and so does a text chunk (png_text_chunk).
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "sdgen/a1111.h"
#include "sdgen/settings.h"
#include "sdgen/error.h"
#include "sdgen/png_reader.h"

namespace {

void check_parameters(const std::string& text) {
  const auto params = sdgen::parse_a1111_parameters(text);
  (void)sdgen::read_a1111_settings(params, "fuzz");
  (void)sdgen::format_a1111_parameters(params);
  (void)sdgen::a1111_unquote(text);
  (void)sdgen::a1111_quote(text);
}

bool valid_utf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

// A field value as sdgen writes it (e.g. a model file name) must read back
// unchanged. Not checked, as A1111 cannot round-trip them either: values with
// surrounding whitespace (stripped), line breaks, or already in double
// quotes (unquoted on reading), invalid UTF-8 (replaced when quoted), and a
// value equal to its key (written as the bare key, a flag).
void check_value_round_trip(const std::string& value) {
  if (value.empty() || value == "Model" || is_space(value.front()) || is_space(value.back()) ||
      value.find_first_of("\n\r") != std::string::npos || value.front() == '"' ||
      !valid_utf8(value))
    return;
  sdgen::A1111Parameters p;
  p.prompt = "a prompt";
  p.set("Steps", "20");
  p.set("Model", value);
  p.set("Seed", "1");
  const auto back = sdgen::parse_a1111_parameters(sdgen::format_a1111_parameters(p));
  const std::string* model = back.find("Model");
  if (!model || *model != value || back.fields.size() != 3) std::abort();
}

// A text chunk sdgen writes (tEXt or iTXt, png_text_chunk) reads back as
// written, invalid UTF-8 replaced; except Latin-1 text whose bytes happen to
// be valid UTF-8 (such as "Ã©"), which the reader takes for UTF-8 on purpose
// (png_reader.cpp, latin1_or_utf8).
void check_text_chunk_round_trip(const std::string& value) {
  const std::string chunk = sdgen::png_text_chunk("parameters", value);
  const auto back = sdgen::png_text_chunks("\x89PNG\r\n\x1a\n" + chunk, "fuzz.png");
  if (back.size() != 1 || back[0].first != "parameters") std::abort();
  const bool itxt = chunk.compare(4, 4, "iTXt") == 0;
  const size_t header = itxt ? 15 : 11;  // "parameters", NUL (iTXt: flag, method, 2 NULs)
  const std::string stored = chunk.substr(8 + header, chunk.size() - 12 - header);
  const std::string& read = back[0].second;
  if (itxt ? read != stored || !valid_utf8(stored)
           : read != value && !(valid_utf8(stored) && read == stored))
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  if (bytes.rfind("\x89PNG\r\n\x1a\n", 0) == 0) {
    try {
      const auto png = sdgen::decode_png(bytes, "fuzz.png");
      if (png.width <= 0 || png.height <= 0 || png.channels < 1 || png.channels > 4 ||
          png.pixels.size() != static_cast<size_t>(png.width) * png.height * png.channels)
        std::abort();
    } catch (const sdgen::Error&) {
    }
    try {
      for (const auto& [key, value] : sdgen::png_text_chunks(bytes, "fuzz.png")) {
        if (!valid_utf8(key) || !valid_utf8(value)) std::abort();  // always UTF-8
        if (key == "parameters") check_parameters(value);
      }
    } catch (const sdgen::Error&) {  // corrupt or oversized compressed text
    }
    return 0;
  }
  check_parameters(bytes);
  check_value_round_trip(bytes);
  check_text_chunk_round_trip(bytes);
  return 0;
}
