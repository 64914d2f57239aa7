#include "sdgen/output_pattern.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "sdgen/error.h"

namespace sdgen {

std::string prompt_slug(const std::string& prompt, size_t max_length) {
  std::string slug;
  bool dash = false;
  for (const char ch : prompt) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x80 && std::isalnum(c)) {
      if (dash && !slug.empty()) slug += '-';
      dash = false;
      if (slug.size() >= max_length) break;
      slug += static_cast<char>(std::tolower(c));
    } else {
      dash = true;
    }
  }
  while (slug.size() > max_length) slug.pop_back();
  while (!slug.empty() && slug.back() == '-') slug.pop_back();
  return slug.empty() ? "prompt" : slug;
}

bool output_pattern_has_fields(const std::string& pattern) {
  for (const char* f : {"{index}", "{seed}", "{prompt}", "{line}"})
    if (pattern.find(f) != std::string::npos) return true;
  for (size_t i = pattern.find('%'); i != std::string::npos; i = pattern.find('%', i + 1)) {
    size_t j = i + 1;
    while (j < pattern.size() && std::isdigit(static_cast<unsigned char>(pattern[j]))) ++j;
    if (j < pattern.size() && pattern[j] == 'd') return true;
    if (j == i + 1 && j < pattern.size() && pattern[j] == '%') i = j;  // "%%"
  }
  return false;
}

std::string expand_output_pattern(const std::string& pattern, const OutputFields& f) {
  std::string out;
  for (size_t i = 0; i < pattern.size();) {
    const char c = pattern[i];
    if (c == '{') {
      if (i + 1 < pattern.size() && pattern[i + 1] == '{') {
        out += '{';
        i += 2;
        continue;
      }
      const size_t close = pattern.find('}', i);
      if (close == std::string::npos)
        throw Error("output pattern '" + pattern + "': unclosed '{' (write '{{' for a brace)");
      const std::string name = pattern.substr(i + 1, close - i - 1);
      if (name == "index")
        out += std::to_string(f.index);
      else if (name == "seed")
        out += std::to_string(f.seed);
      else if (name == "prompt")
        out += prompt_slug(f.prompt);
      else if (name == "line")
        out += std::to_string(f.line);
      else
        throw Error("output pattern '" + pattern + "': unknown field {" + name +
                    "} (valid: {index} {seed} {prompt} {line})");
      i = close + 1;
      continue;
    }
    if (c == '}' && i + 1 < pattern.size() && pattern[i + 1] == '}') {
      out += '}';
      i += 2;
      continue;
    }
    if (c == '%') {
      if (i + 1 < pattern.size() && pattern[i + 1] == '%') {
        out += '%';
        i += 2;
        continue;
      }
      size_t j = i + 1;
      const bool zero = j < pattern.size() && pattern[j] == '0';
      while (j < pattern.size() && std::isdigit(static_cast<unsigned char>(pattern[j]))) ++j;
      if (j < pattern.size() && pattern[j] == 'd') {
        const int width = j > i + 1 ? std::atoi(pattern.substr(i + 1, j - i - 1).c_str()) : 0;
        if (width > 32) throw Error("output pattern '" + pattern + "': field width over 32");
        char buf[64];
        std::snprintf(buf, sizeof buf, zero ? "%0*lld" : "%*lld", width,
                      static_cast<long long>(f.index));
        out += buf;
        i = j + 1;
        continue;
      }
    }
    out += c;
    ++i;
  }
  return out;
}

std::string with_index_suffix(const std::string& path, int64_t index) {
  const std::filesystem::path p(path);
  const std::string name = p.stem().string() + "-" + std::to_string(index) + p.extension().string();
  return (p.parent_path() / name).string();
}

Shard parse_shard(const std::string& text) {
  const auto slash = text.find('/');
  auto bad = [&text](const std::string& why) {
    return Error("--shard " + text + ": " + why + " (expected K/N with 0 <= K < N, e.g. 0/4)");
  };
  if (slash == std::string::npos || slash == 0 || slash + 1 == text.size()) throw bad("no K/N");
  auto number = [&](const std::string& s) {
    for (const char c : s)
      if (!std::isdigit(static_cast<unsigned char>(c))) throw bad("'" + s + "' is not a number");
    if (s.size() > 9) throw bad("'" + s + "' is too large");
    return std::atoi(s.c_str());
  };
  Shard shard;
  shard.index = number(text.substr(0, slash));
  shard.count = number(text.substr(slash + 1));
  if (shard.count < 1) throw bad("N must be at least 1");
  if (shard.index >= shard.count) throw bad("K must be less than N");
  return shard;
}

}  // namespace sdgen
