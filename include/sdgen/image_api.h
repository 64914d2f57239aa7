#pragma once

// The request bodies of the image web APIs `sdgen serve` speaks, read into
// the settings table's values: A1111's POST /sdapi/v1/txt2img (field names
// and defaults of its modules/api/models.py, StableDiffusionTxt2ImgProcessingAPI;
// each setting's field is the table's API_KEY column) and OpenAI's
// POST /v1/images/generations. No model and no libtorch: these parse
// untrusted input.

#include <optional>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

#include "sdgen/settings.h"

namespace sdgen {

// A request field that is not acceptable: the field as the API names it
// ("steps", "override_settings.CLIP_stop_at_last_layers", "size"; "" for the
// body as a whole) and the reason.
class ApiFieldError : public std::runtime_error {
 public:
  ApiFieldError(std::string field, const std::string& message)
      : std::runtime_error(message), field_(std::move(field)) {}
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

struct A1111Request {
  // A1111's defaults where they differ from sdgen's (steps 50, CFG scale 7,
  // sampler "Euler", 512x512), then the body's fields, checked.
  SettingLayer layer{"the request"};
  std::optional<uint64_t> seed;  // nullopt: seed -1, a random one
  // The body with A1111's defaults filled in: the response's "parameters".
  nlohmann::json parameters;
};
// A txt2img body. Throws ApiFieldError naming the field: a value of the wrong
// type or out of range, an unknown sampler or scheduler, a field that asks for
// something sdgen does not do (enable_hr, restore_faces, subseeds, styles,
// scripts) or that would name a file on the server (a model or VAE other than
// the one loaded is refused by the server, not here).
A1111Request parse_a1111_txt2img(const nlohmann::json& body);

struct OpenAIRequest {
  std::string prompt;
  int n = 1;                  // images, 1 to 10
  int width = 0, height = 0;  // "size" "WxH"; 0 when absent: the server's default
};
// An images/generations body; throws ApiFieldError naming the field (OpenAI's
// "param"): a missing prompt, n outside 1-10, a size that is not "WxH" with
// both sides multiples of 8 in sdgen's range, response_format other than
// b64_json, an argument OpenAI does not define.
OpenAIRequest parse_openai_generation(const nlohmann::json& body);

}  // namespace sdgen
