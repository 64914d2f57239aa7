#include "sdgen/prompt_file.h"

#include <cctype>
#include <cmath>
#include <limits>

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

// Throws std::string describing the problem with `key`.
std::string get_string(const json& v, const std::string& key) {
  if (!v.is_string()) throw "\"" + key + "\" must be a string, found " + v.dump();
  return v.get<std::string>();
}

int64_t get_integer(const json& v, const std::string& key, int64_t lo, int64_t hi) {
  int64_t n = 0;
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      throw "\"" + key + "\" " + v.dump() + " is out of range [" + std::to_string(lo) + ", " +
          std::to_string(hi) + "]";
    n = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    n = v.get<int64_t>();
  } else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
             std::fabs(v.get<double>()) < 9e15) {
    n = static_cast<int64_t>(v.get<double>());
  } else {
    throw "\"" + key + "\" must be a whole number, found " + v.dump();
  }
  if (n < lo || n > hi)
    throw "\"" + key + "\" " + std::to_string(n) + " is out of range [" + std::to_string(lo) +
        ", " + std::to_string(hi) + "]";
  return n;
}

double get_number(const json& v, const std::string& key, double lo, double hi) {
  if (!v.is_number()) throw "\"" + key + "\" must be a number, found " + v.dump();
  const double d = v.get<double>();
  if (!(d >= lo && d <= hi))
    throw "\"" + key + "\" " + v.dump() + " is out of range [" + std::to_string(lo) + ", " +
        std::to_string(hi) + "]";
  return d;
}

int get_size(const json& v, const std::string& key) {
  const auto n = get_integer(v, key, 1, 8192);
  if (n % 8 != 0) throw "\"" + key + "\" " + std::to_string(n) + " must be a multiple of 8";
  return static_cast<int>(n);
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
    if (key == "prompt") {
      e.prompt = get_string(v, key);
    } else if (key == "negative_prompt") {
      e.negative_prompt = get_string(v, key);
    } else if (key == "sampler") {
      e.sampler = get_string(v, key);
    } else if (key == "scheduler") {
      std::string s = get_string(v, key);
      for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (s != "karras" && s != "normal")
        throw "\"scheduler\" must be \"karras\" or \"normal\", found " + v.dump();
      e.scheduler = s;
    } else if (key == "init_image") {
      e.init_image = get_string(v, key);
    } else if (key == "output") {
      e.output = get_string(v, key);
      if (e.output->empty()) throw std::string("\"output\" is empty");
    } else if (key == "seed") {
      if (v.is_number_unsigned())
        e.seed = v.get<uint64_t>();
      else
        e.seed = static_cast<uint64_t>(get_integer(v, key, 0, std::numeric_limits<int64_t>::max()));
    } else if (key == "steps") {
      e.steps = static_cast<int>(get_integer(v, key, 1, 1000));
    } else if (key == "cfg_scale") {
      e.cfg_scale = get_number(v, key, 0, 1000);
    } else if (key == "guidance_rescale") {
      e.guidance_rescale = get_number(v, key, 0, 1);
    } else if (key == "width") {
      e.width = get_size(v, key);
    } else if (key == "height") {
      e.height = get_size(v, key);
    } else if (key == "batch_size") {
      e.batch_size = static_cast<int>(get_integer(v, key, 1, 64));
    } else if (key == "clip_skip") {
      e.clip_skip = static_cast<int>(get_integer(v, key, 1, 1000));
    } else if (key == "strength") {
      e.strength = get_number(v, key, 0, 1);
      if (*e.strength <= 0) throw std::string("\"strength\" must be in (0, 1]");
    } else {
      std::string valid;
      for (const auto& k : prompt_file_keys()) valid += (valid.empty() ? "" : ", ") + k;
      throw "unknown key \"" + key + "\" (valid: " + valid + ")";
    }
  }
}

}  // namespace

const std::vector<std::string>& prompt_file_keys() {
  static const std::vector<std::string> keys = {
      "prompt",           "negative_prompt", "seed",       "steps",    "cfg_scale",
      "guidance_rescale", "width",           "height",     "sampler",  "scheduler",
      "batch_size",       "clip_skip",       "init_image", "strength", "output"};
  return keys;
}

PromptLine parse_prompt_line(const std::string& raw, int line_number) {
  PromptLine out;
  std::string line = raw;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const std::string text = trim(line);
  if (text.empty() || text[0] == '#') return out;
  out.entry.line = line_number;
  if (text.size() > kMaxPromptLineBytes) {
    out.kind = PromptLine::Kind::error;
    out.error = "line " + std::to_string(line_number) + ": the line is " +
                std::to_string(text.size()) + " bytes, longer than the " +
                std::to_string(kMaxPromptLineBytes) + "-byte limit";
    return out;
  }
  if (text[0] != '{') {
    out.kind = PromptLine::Kind::entry;
    out.entry.prompt = text;
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
