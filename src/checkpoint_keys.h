#pragma once

// Private to the single-file checkpoint code (checkpoint.cpp, the
// architecture; checkpoint_convert.cpp, the renaming): the LDM key prefixes
// and the small parsers of dotted tensor names both use.

#include <algorithm>
#include <cctype>
#include <string>

#include "sdgen/checkpoint.h"
#include "sdgen/weights.h"

namespace sdgen::ldm_keys {

inline const std::string kUNet = kLDMUNetPrefix;
inline const std::string kVAE = kLDMVAEPrefix;
inline const std::string kCLIP = kLDMCLIPPrefix;
inline const std::string kOpenCLIP = kOpenCLIPPrefix;

inline bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// If `s` starts with `prefix`, stores what follows in *rest.
inline bool take(const std::string& s, const std::string& prefix, std::string* rest) {
  if (!starts_with(s, prefix)) return false;
  *rest = s.substr(prefix.size());
  return true;
}

// Parses "<digits>." at the front of `s`.
inline bool take_index(const std::string& s, int* index, std::string* rest) {
  size_t n = 0;
  while (n < s.size() && std::isdigit(static_cast<unsigned char>(s[n]))) ++n;
  if (n == 0 || n > 6 || n >= s.size() || s[n] != '.') return false;
  *index = std::stoi(s.substr(0, n));
  *rest = s.substr(n + 1);
  return true;
}

// "<prefix><int>.<rest>"
inline bool take_indexed(const std::string& s, const std::string& prefix, int* index,
                         std::string* rest) {
  std::string tail;
  return take(s, prefix, &tail) && take_index(tail, index, rest);
}

// The entries of a sorted map whose keys start with `prefix`.
struct PrefixRange {
  TensorMap::const_iterator first, last;
  TensorMap::const_iterator begin() const { return first; }
  TensorMap::const_iterator end() const { return last; }
  bool empty() const { return first == last; }
};

inline PrefixRange with_prefix(const TensorMap& all, const std::string& prefix) {
  auto first = all.lower_bound(prefix);
  auto last = first;
  while (last != all.end() && starts_with(last->first, prefix)) ++last;
  return {first, last};
}

inline bool has_prefix(const TensorMap& all, const std::string& prefix) {
  auto it = all.lower_bound(prefix);
  return it != all.end() && starts_with(it->first, prefix);
}

// 1 + the largest N over keys "<prefix>N.…" (0 when there are none).
inline int count_indexed(const TensorMap& all, const std::string& prefix) {
  int count = 0;
  for (const auto& kv : with_prefix(all, prefix)) {
    int index = 0;
    std::string rest;
    if (take_index(kv.first.substr(prefix.size()), &index, &rest))
      count = std::max(count, index + 1);
  }
  return count;
}

}  // namespace sdgen::ldm_keys
