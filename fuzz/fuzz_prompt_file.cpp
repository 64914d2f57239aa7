// libFuzzer target: prompt files (--prompt-file): plain lines, comments and
// JSON lines with typed, range-checked settings. parse_prompt_text must never
// throw; every entry it accepts must satisfy the documented ranges, every
// error must name its line.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sdgen/prompt_file.h"
#include "sdgen/settings.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto lines = sdgen::parse_prompt_text(text);
  int number = 0;
  for (const auto& line : lines) {
    ++number;
    using Kind = sdgen::PromptLine::Kind;
    if (line.kind == Kind::error) {
      if (line.error.rfind("line " + std::to_string(number) + ": ", 0) != 0) std::abort();
      continue;
    }
    if (line.kind != Kind::entry) continue;
    const auto& e = line.entry;
    if (e.line != number) std::abort();
    // Every value a line sets passed its setting's rule: resolving the line
    // never throws, and the documented ranges hold.
    const sdgen::Settings s = sdgen::resolve_settings({&e.settings});
    for (const int size_value : {s.width, s.height})
      if (size_value < 8 || size_value > 8192 || size_value % 8 != 0) std::abort();
    if (s.steps < 1 || s.steps > 1000) std::abort();
    if (s.batch_size < 1 || s.batch_size > 64) std::abort();
    if (s.clip_skip < 1 || s.clip_skip > 1000) std::abort();
    if (!(s.cfg_scale >= 0 && s.cfg_scale <= 1000)) std::abort();
    if (!(s.strength > 0 && s.strength <= 1)) std::abort();
    if (!(s.eta >= 0 && s.eta <= 1) || !(s.guidance_rescale >= 0 && s.guidance_rescale <= 1))
      std::abort();
    if (s.output.empty()) std::abort();
    // Each checked value reads back as itself (the check is idempotent).
    for (const auto& [name, value] : e.settings.values())
      if (sdgen::setting(name).check(value) != value) std::abort();
  }
  return 0;
}
