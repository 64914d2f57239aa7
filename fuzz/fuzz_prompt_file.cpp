// libFuzzer target: prompt files (--prompt-file): plain lines, comments and
// JSON lines with typed, range-checked settings. parse_prompt_text must never
// throw; every entry it accepts must satisfy the documented ranges, every
// error must name its line.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sdgen/prompt_file.h"

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
    for (const auto& size_value : {e.width, e.height})
      if (size_value && (*size_value < 8 || *size_value > 8192 || *size_value % 8 != 0))
        std::abort();
    if (e.steps && (*e.steps < 1 || *e.steps > 1000)) std::abort();
    if (e.batch_size && (*e.batch_size < 1 || *e.batch_size > 64)) std::abort();
    if (e.clip_skip && (*e.clip_skip < 1 || *e.clip_skip > 1000)) std::abort();
    if (e.cfg_scale && !(*e.cfg_scale >= 0 && *e.cfg_scale <= 1000)) std::abort();
    if (e.strength && !(*e.strength > 0 && *e.strength <= 1)) std::abort();
    if (e.output && e.output->empty()) std::abort();
    if (e.scheduler && *e.scheduler != "karras" && *e.scheduler != "normal") std::abort();
  }
  return 0;
}
