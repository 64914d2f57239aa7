// libFuzzer target: what sdgen reads from a PNG (--from-png, --show-params,
// init images): the decoder (stb_image), the tEXt chunk walker and A1111's
// "parameters" text with the settings read from it. Inputs starting with the
// PNG signature go through the decoder; anything else is taken as a
// parameters text. Also checks that every field value sdgen writes reads back
// unchanged.
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
    for (const auto& [key, value] : sdgen::png_text_chunks(bytes))
      if (key == "parameters") check_parameters(value);
    return 0;
  }
  check_parameters(bytes);
  check_value_round_trip(bytes);
  return 0;
}
