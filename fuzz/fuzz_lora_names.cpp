// libFuzzer target: the names LoRAs come by. A1111's <TYPE:ARGS> tags cut
// out of a prompt (every byte ends up in the prompt or in exactly one tag,
// in order), the lora weights read from them (finite, or one Error), the
// --lora FILE[:WEIGHT] argument, and a LoRA file's tensor names split into
// layer + suffix and LDM block + rest (pieces that join back to the input).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sdgen/error.h"
#include "sdgen/extra_networks.h"
#include "sdgen/lora_keys.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);

  const auto parsed = sdgen::parse_extra_networks(text);
  size_t total = parsed.prompt.size();
  size_t at = 0;
  for (const auto& tag : parsed.tags) {
    total += tag.text.size();
    const auto found = text.find(tag.text, at);
    if (found == std::string::npos || tag.text.front() != '<' || tag.text.back() != '>' ||
        tag.type.empty())
      std::abort();
    at = found + tag.text.size();
  }
  if (total != text.size()) std::abort();
  try {
    for (const auto& ref : sdgen::lora_refs(parsed))
      if (ref.name.empty() || !std::isfinite(ref.te_weight) || !std::isfinite(ref.unet_weight))
        std::abort();
  } catch (const sdgen::Error&) {
  }
  try {
    const auto ref = sdgen::parse_lora_argument(text);
    if (ref.name.empty() || !std::isfinite(ref.te_weight)) std::abort();
  } catch (const sdgen::Error&) {
  }

  std::string layer, suffix;
  if (sdgen::split_lora_key(text, &layer, &suffix) && (layer.empty() || layer + suffix != text))
    std::abort();
  if (const auto ldm = sdgen::split_ldm_layer_name(text)) {
    std::string joined = ldm->block + "." + ldm->rest;
    for (auto& c : joined)
      if (c == '.') c = '_';
    std::string underscored = text;
    for (auto& c : underscored)
      if (c == '.') c = '_';
    if (joined != underscored || ldm->rest.empty()) std::abort();
  }
  return 0;
}
