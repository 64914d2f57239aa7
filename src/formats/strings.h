#pragma once

// Small string helpers shared by the formats layer's parsers.

#include <cctype>
#include <string>
#include <vector>

namespace sdgen::formats {

// `s` without leading and trailing ASCII whitespace (std::isspace in the "C"
// locale, as Python's str.strip() on ASCII text).
inline std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// The non-empty entries of a ':'-separated list ($SDGEN_LORA_DIR and the like).
inline std::vector<std::string> split_path_list(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t colon = list.find(':', start);
    std::string entry = list.substr(start, colon == std::string::npos ? colon : colon - start);
    if (!entry.empty()) out.push_back(std::move(entry));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  return out;
}

}  // namespace sdgen::formats
