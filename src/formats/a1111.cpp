#include "sdgen/a1111.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/strings.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
// Python's \w on UTF-8 bytes: ASCII letters, digits, '_' and any non-ASCII byte.
bool is_word(char c) {
  const auto u = static_cast<unsigned char>(c);
  return std::isalnum(u) || u == '_' || u >= 0x80;
}

using formats::strip;

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (true) {
    const size_t nl = s.find('\n', start);
    if (nl == std::string::npos) {
      lines.push_back(s.substr(start));
      return lines;
    }
    lines.push_back(s.substr(start, nl - start));
    start = nl + 1;
  }
}

// re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line),
// written out by hand (no backtracking regex engine on untrusted text).
std::vector<std::pair<std::string, std::string>> find_params(const std::string& line) {
  std::vector<std::pair<std::string, std::string>> out;
  const size_t n = line.size();
  size_t pos = 0;
  while (pos < n) {
    size_t i = pos;
    while (i < n && is_space(line[i])) ++i;
    // Key: \w then [\w \-/]+ up to a ':'.
    if (i >= n || !is_word(line[i])) {
      ++pos;
      continue;
    }
    size_t k = i + 1;
    while (k < n && (is_word(line[k]) || line[k] == ' ' || line[k] == '-' || line[k] == '/')) ++k;
    if (k == i + 1 || k >= n || line[k] != ':') {
      ++pos;
      continue;
    }
    const std::string key = line.substr(i, k - i);
    size_t v = k + 1;
    while (v < n && is_space(line[v])) ++v;
    // Value: a quoted string followed by ',' or the end, else [^,]*.
    size_t end = std::string::npos;
    if (v < n && line[v] == '"') {
      size_t q = v + 1;
      bool any = false;
      while (q < n) {
        if (line[q] == '\\' && q + 1 < n) {
          q += 2;
          any = true;
        } else if (line[q] != '"' && line[q] != '\\') {
          ++q;
          any = true;
        } else {
          break;
        }
      }
      if (any && q < n && line[q] == '"' && (q + 1 == n || line[q + 1] == ',')) end = q + 1;
    }
    if (end == std::string::npos) {
      end = line.find(',', v);
      if (end == std::string::npos) end = n;
    }
    out.emplace_back(key, line.substr(v, end - v));
    pos = end < n ? end + 1 : n;  // the ',' is part of the match
  }
  return out;
}

}  // namespace

const std::string* A1111Parameters::find(const std::string& key) const {
  for (const auto& [k, v] : fields)
    if (k == key) return &v;
  return nullptr;
}

void A1111Parameters::set(const std::string& key, const std::string& value) {
  for (auto& [k, v] : fields)
    if (k == key) {
      v = value;
      return;
    }
  fields.emplace_back(key, value);
}

std::string a1111_quote(const std::string& value) {
  if (value.find_first_of(",:\n") == std::string::npos) return value;
  // json.dumps(text, ensure_ascii=False); invalid UTF-8 is replaced, not fatal.
  return nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string a1111_unquote(const std::string& value) {
  if (value.size() < 2 || value.front() != '"' || value.back() != '"') return value;
  try {
    const auto j = nlohmann::json::parse(value);
    if (j.is_string()) return j.get<std::string>();
  } catch (const std::exception&) {
  }
  return value;
}

std::string format_a1111_parameters(const A1111Parameters& p) {
  std::string fields;
  for (const auto& [k, v] : p.fields) {
    if (!fields.empty()) fields += ", ";
    fields += k == v ? k : k + ": " + a1111_quote(v);
  }
  std::string text = p.prompt;
  if (!p.negative_prompt.empty()) text += "\nNegative prompt: " + p.negative_prompt;
  text += "\n" + fields;
  return strip(text);
}

A1111Parameters parse_a1111_parameters(const std::string& text) {
  A1111Parameters out;
  std::vector<std::string> lines = split_lines(strip(text));
  std::string last = lines.back();
  lines.pop_back();
  auto params = find_params(last);
  if (params.size() < 3) {
    lines.push_back(last);
    params.clear();
  }
  bool done_with_prompt = false;
  for (auto line : lines) {
    line = strip(line);
    if (line.rfind("Negative prompt:", 0) == 0) {
      done_with_prompt = true;
      line = strip(line.substr(16));
    }
    std::string& target = done_with_prompt ? out.negative_prompt : out.prompt;
    target += (target.empty() ? "" : "\n") + line;
  }
  for (auto& [k, v] : params) {
    if (v.empty()) continue;  // A1111 skips these (v[0] raises)
    if (v.front() == '"' && v.back() == '"') v = a1111_unquote(v);
    out.fields.emplace_back(k, v);
  }
  return out;
}

std::string a1111_number(double value) {
  char buf[64];
  // Whole numbers as they are ("10", not "1e+01", which %g's shortest form is).
  if (std::isfinite(value) && std::floor(value) == value && std::fabs(value) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", value);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  return buf;
}

std::string a1111_model_name(const std::string& model_path) {
  fs::path p = fs::path(model_path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();  // "folder/" -> "folder"
  std::error_code ec;
  if (fs::is_directory(p, ec)) return p.filename().string();
  return p.stem().string();
}

}  // namespace sdgen
