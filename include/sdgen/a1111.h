#pragma once

// The "parameters" text A1111 writes into its PNGs and reads back in "PNG Info":
//   <prompt>
//   Negative prompt: <negative prompt>
//   Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, ...
// Writer and reader are pure functions over strings (fuzzable).

#include <string>
#include <utility>
#include <vector>

namespace sdgen {

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
// The "Model:" name: the checkpoint's file stem or the diffusers folder's name.
std::string a1111_model_name(const std::string& model_path);

// What sdgen writes for an image and reads back (a1111_parameters,
// read_a1111_settings) is driven by the settings table: sdgen/settings.h.

}  // namespace sdgen
