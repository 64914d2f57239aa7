#include "sdgen/prompt_file.h"

#include <cctype>

#include <nlohmann/json.hpp>

namespace sdgen {
namespace {

using nlohmann::json;

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

void parse_json_entry(const std::string& text, PromptEntry& e) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& err) {
    std::string what = err.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 5: ..." -> the part after it.
    const auto colon = what.find(": ");
    throw std::string("invalid JSON: ") +
        (colon == std::string::npos ? what : what.substr(colon + 2));
  }
  if (!j.is_object()) throw std::string("a line starting with '{' must be one JSON object");
  for (const auto& [key, v] : j.items()) {
    const SettingSpec* spec = find_setting_by_line_key(key);
    if (!spec) {
      std::string valid;
      for (const auto& k : prompt_file_keys()) valid += (valid.empty() ? "" : ", ") + k;
      throw "unknown key \"" + key + "\" (valid: " + valid + ")";
    }
    try {
      e.settings.set_checked(*spec, v);
    } catch (const SettingError& err) {
      // "steps" must be a whole number, found "ten" / "steps" 0: must be between 1 and 1000
      if (err.unreadable())
        throw "\"" + key + "\" " + err.what() + ", found " +
            v.dump(-1, ' ', false, json::error_handler_t::replace);
      throw describe_line_value(*spec, v) + ": " + err.what();
    }
  }
}

}  // namespace

PromptLine parse_prompt_line(const std::string& raw, int line_number) {
  PromptLine out;
  std::string line = raw;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const std::string text = trim(line);
  if (text.empty() || text[0] == '#') return out;
  out.entry.line = line_number;
  out.entry.settings = SettingLayer("line " + std::to_string(line_number));
  if (text.size() > kMaxPromptLineBytes) {
    out.kind = PromptLine::Kind::error;
    out.error = "line " + std::to_string(line_number) + ": the line is " +
                std::to_string(text.size()) + " bytes, longer than the " +
                std::to_string(kMaxPromptLineBytes) + "-byte limit";
    return out;
  }
  if (text[0] != '{') {
    out.kind = PromptLine::Kind::entry;
    out.entry.settings.set("prompt", text);
    return out;
  }
  try {
    parse_json_entry(text, out.entry);
    out.kind = PromptLine::Kind::entry;
  } catch (const std::string& message) {
    out.kind = PromptLine::Kind::error;
    out.error = "line " + std::to_string(line_number) + ": " + message;
  } catch (const std::exception& e) {  // nlohmann type errors and the like
    out.kind = PromptLine::Kind::error;
    out.error = "line " + std::to_string(line_number) + ": " + e.what();
  }
  return out;
}

std::vector<PromptLine> parse_prompt_text(const std::string& text) {
  std::vector<PromptLine> out;
  size_t start = 0;
  int number = 1;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(parse_prompt_line(text.substr(start, nl - start), number++));
    start = nl + 1;
  }
  return out;
}

}  // namespace sdgen
