// Lookups over the Unicode data tables in unicode_data.inc, which
// scripts/gen_unicode_tables.py generates from Python's unicodedata:
//   python3 scripts/gen_unicode_tables.py > src/unicode_data.inc
// This file is hand-written; the row types below are the contract with the
// generator (keep them in sync with its row formats).

#include "unicode_tables.h"

#include <algorithm>
#include <iterator>
#include <utility>

namespace sdgen::unicode {
namespace {

struct Range {
  char32_t first, last;
};
struct LowerRun {
  char32_t start;
  uint16_t count, stride;
  int32_t delta;
};
struct LowerMulti {
  char32_t cp;
  char32_t to[3];  // zero-padded
};
struct CombiningRange {
  char32_t first, last;
  uint8_t ccc;
};
struct Decomposition {
  char32_t cp, first, second;  // second == 0: singleton
};
struct Composition {
  char32_t first, second, composite;
};

#include "unicode_data.inc"

bool in_ranges(const Range* begin, const Range* end, char32_t c) {
  auto it = std::upper_bound(begin, end, c, [](char32_t v, const Range& r) { return v < r.first; });
  return it != begin && c <= std::prev(it)->last;
}

}  // namespace

bool is_letter(char32_t c) { return in_ranges(std::begin(kLetters), std::end(kLetters), c); }

bool is_number(char32_t c) { return in_ranges(std::begin(kNumbers), std::end(kNumbers), c); }

void append_lower(char32_t c, std::u32string& out) {
  for (const LowerMulti& m : kLowerMulti) {
    if (m.cp != c) continue;
    for (char32_t x : m.to) {
      if (x != 0) out.push_back(x);
    }
    return;
  }
  auto it = std::upper_bound(std::begin(kLower), std::end(kLower), c,
                             [](char32_t v, const LowerRun& r) { return v < r.start; });
  if (it != std::begin(kLower)) {
    const LowerRun& r = *std::prev(it);
    const char32_t offset = c - r.start;
    if (offset % r.stride == 0 && offset / r.stride < r.count) {
      out.push_back(static_cast<char32_t>(static_cast<int32_t>(c) + r.delta));
      return;
    }
  }
  out.push_back(c);
}

int combining_class(char32_t c) {
  auto it = std::upper_bound(std::begin(kCombining), std::end(kCombining), c,
                             [](char32_t v, const CombiningRange& r) { return v < r.first; });
  if (it == std::begin(kCombining)) return 0;
  --it;
  return c <= it->last ? it->ccc : 0;
}

bool canonical_decomposition(char32_t c, char32_t* first, char32_t* second) {
  auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), c,
                             [](const Decomposition& d, char32_t v) { return d.cp < v; });
  if (it == std::end(kDecompositions) || it->cp != c) return false;
  *first = it->first;
  *second = it->second;
  return true;
}

char32_t primary_composite(char32_t first, char32_t second) {
  auto it = std::lower_bound(std::begin(kCompositions), std::end(kCompositions),
                             std::make_pair(first, second),
                             [](const Composition& e, const std::pair<char32_t, char32_t>& p) {
                               return e.first != p.first ? e.first < p.first : e.second < p.second;
                             });
  if (it == std::end(kCompositions) || it->first != first || it->second != second) return 0;
  return it->composite;
}

}  // namespace sdgen::unicode
