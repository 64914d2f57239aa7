#pragma once

// Small string helpers shared by the formats layer's parsers.

#include <cctype>
#include <string>

namespace sdgen::formats {

// `s` without leading and trailing ASCII whitespace (std::isspace in the "C"
// locale, as Python's str.strip() on ASCII text).
inline std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

}  // namespace sdgen::formats
