#pragma once

// The "parameters" text A1111 writes into its PNGs and reads back in "PNG Info":
//   <prompt>
//   Negative prompt: <negative prompt>
//   Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, ...
// Writer and reader are pure functions over strings (fuzzable).

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sdgen {

struct GenerationRequest;  // sdgen/pipeline.h; the parsers here need no libtorch

struct A1111Parameters {
  std::string prompt;
  std::string negative_prompt;
  // "Steps" -> "20", in order, values unquoted.
  std::vector<std::pair<std::string, std::string>> fields;

  const std::string* find(const std::string& key) const;       // nullptr when absent
  void set(const std::string& key, const std::string& value);  // replaces or appends
};

// A1111 infotext_utils.quote: values holding ',' ':' or a newline become a
// JSON string (json.dumps(..., ensure_ascii=False)); others stay as they are.
std::string a1111_quote(const std::string& value);
// infotext_utils.unquote: a value in double quotes that parses as a JSON
// string is decoded; anything else is returned unchanged.
std::string a1111_unquote(const std::string& value);

// processing.create_infotext: prompt, "\nNegative prompt: ..." when there is
// one, then the fields joined by ", " as "Key: value" (quoted as above), the
// whole stripped of surrounding whitespace.
std::string format_a1111_parameters(const A1111Parameters& parameters);
// infotext_utils.parse_generation_parameters: the last line is the field list
// when it holds at least 3 "Key: value" pairs; lines before "Negative prompt:"
// form the prompt, the rest the negative prompt. Never throws.
A1111Parameters parse_a1111_parameters(const std::string& text);

// The shortest decimal text that reads back as the same double ("7", "7.5").
std::string a1111_number(double value);
// A1111's sampler name for a canonical sdgen sampler ("euler_a" -> "Euler a").
std::string a1111_sampler_label(const std::string& sampler);
// The "Model:" name: the checkpoint's file stem or the diffusers folder's name.
std::string a1111_model_name(const std::string& model_path);

// What sdgen writes for one image of a request.
struct ImageMetadata {
  std::string sampler;     // canonical sampler name (Scheduler::name())
  std::string model_hash;  // first 10 hex digits of the model's SHA-256, or ""
  std::string model_name;
  int batch_pos = 0;  // this image's place in its batch
  bool long_prompt_truncate = false;
  std::string version = SDGEN_VERSION;
};
// (Defined in a1111_request.cpp, the only part of this module that needs libtorch.)
A1111Parameters a1111_parameters_for(const GenerationRequest& request, const ImageMetadata& image);

// Settings read back from parameters; absent or unreadable fields stay empty
// (unreadable ones are described in `warnings`).
struct A1111Settings {
  std::optional<std::string> prompt, negative_prompt;
  std::optional<std::string> sampler;   // canonical sdgen name when known, else as written
  std::optional<std::string> schedule;  // "karras", "normal" or "" (automatic)
  std::optional<int> steps, width, height, clip_skip, batch_size, batch_pos;
  std::optional<double> cfg_scale, strength, eta;
  std::optional<double> guidance_rescale;  // "CFG Rescale" (the A1111 CFG Rescale extension's)
  std::optional<uint64_t> seed;
  std::optional<std::string> model_name, model_hash;
  std::optional<bool> long_prompt_truncate;
  std::vector<std::string> warnings;
};
A1111Settings a1111_settings(const A1111Parameters& parameters);

}  // namespace sdgen
