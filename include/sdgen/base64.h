#pragma once

// Base64 (RFC 4648, the standard alphabet with '=' padding), as the web APIs
// carry PNGs: A1111's "images" / "init_images" and OpenAI's "b64_json".

#include <string>

namespace sdgen {

std::string base64_encode(const std::string& bytes);

// Decodes `text`; a "data:...;base64," prefix (A1111 accepts data URLs) and
// ASCII whitespace are skipped, padding is optional. Throws Error on any
// other character, a misplaced '=' or a length that no encoding has.
std::string base64_decode(const std::string& text);

}  // namespace sdgen
