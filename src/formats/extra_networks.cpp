#include "sdgen/extra_networks.h"

#include <cctype>
#include <cmath>
#include <cstdlib>

#include "formats/strings.h"
#include "sdgen/error.h"

namespace sdgen {
namespace {

// Python's \w on ASCII text (letters, digits, underscore); bytes >= 0x80 are
// taken as word characters too, as \w matches most non-ASCII letters.
bool word_char(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out(1);
  for (const char c : text) {
    if (c == sep)
      out.emplace_back();
    else
      out.back() += c;
  }
  return out;
}

// Python float(): surrounding whitespace allowed, the whole text a number.
bool to_number(const std::string& text, double* value) {
  const std::string t = formats::strip(text);
  if (t.empty()) return false;
  char* end = nullptr;
  *value = std::strtod(t.c_str(), &end);
  return end == t.c_str() + t.size();
}

double weight(const std::string& text, const ExtraNetworkTag& tag, const char* what) {
  double v = 0;
  if (!to_number(text, &v) || !std::isfinite(v))
    throw Error("prompt: " + tag.text + ": " + what + " weight '" + text + "' is not a number");
  return v;
}

}  // namespace

PromptWithTags parse_extra_networks(const std::string& prompt) {
  PromptWithTags out;
  size_t i = 0;
  while (i < prompt.size()) {
    if (prompt[i] == '<') {
      // <(\w+):([^>]+)>
      size_t j = i + 1;
      while (j < prompt.size() && word_char(static_cast<unsigned char>(prompt[j]))) ++j;
      if (j > i + 1 && j < prompt.size() && prompt[j] == ':') {
        const size_t close = prompt.find('>', j + 1);
        if (close != std::string::npos && close > j + 1) {
          ExtraNetworkTag tag;
          tag.type = prompt.substr(i + 1, j - i - 1);
          tag.text = prompt.substr(i, close - i + 1);
          for (const auto& item : split(prompt.substr(j + 1, close - j - 1), ':')) {
            const auto eq = item.find('=');
            if (eq == std::string::npos)
              tag.positional.push_back(item);
            else
              tag.named[item.substr(0, eq)] = item.substr(eq + 1);
          }
          out.tags.push_back(std::move(tag));
          i = close + 1;
          continue;
        }
      }
    }
    out.prompt += prompt[i++];
  }
  return out;
}

std::vector<LoraRef> lora_refs(const PromptWithTags& parsed) {
  std::vector<LoraRef> out;
  for (const auto& tag : parsed.tags) {
    if (tag.type != "lora" && tag.type != "lyco") continue;
    LoraRef r;
    if (tag.positional.empty() || formats::strip(tag.positional[0]).empty())
      throw Error("prompt: " + tag.text + ": no LoRA name");
    r.name = tag.positional[0];
    // extra_networks_lora.activate.
    double te = tag.positional.size() > 1 ? weight(tag.positional[1], tag, "text-encoder") : 1.0;
    if (auto it = tag.named.find("te"); it != tag.named.end())
      te = weight(it->second, tag, "text-encoder");
    double unet = tag.positional.size() > 2 ? weight(tag.positional[2], tag, "UNet") : te;
    if (auto it = tag.named.find("unet"); it != tag.named.end())
      unet = weight(it->second, tag, "UNet");
    r.te_weight = te;
    r.unet_weight = unet;
    out.push_back(r);
  }
  return out;
}

LoraRef parse_lora_argument(const std::string& text) {
  LoraRef r;
  r.name = text;
  const auto colon = text.rfind(':');
  double v = 0;
  if (colon != std::string::npos && to_number(text.substr(colon + 1), &v)) {
    if (!std::isfinite(v)) throw Error("--lora " + text + ": the weight is not a finite number");
    r.name = text.substr(0, colon);
    r.te_weight = r.unet_weight = v;
  }
  if (r.name.empty()) throw Error("--lora " + text + ": no file given");
  return r;
}

}  // namespace sdgen
