// libFuzzer target: the request bodies `sdgen serve` reads (sdgen/image_api.h),
// A1111's txt2img and img2img, OpenAI's images/generations and the model
// names requests give. The input is parsed as JSON
// (inputs that are not JSON are dropped) and given to every reader. The only
// documented failure is ApiFieldError; anything else escaping is a bug, and so
// is an accepted request the server could not use: settings that do not
// resolve, a "parameters" echo that cannot be written back as JSON, an OpenAI
// count or size outside what the parser promises.
#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "sdgen/image_api.h"
#include "sdgen/settings.h"

namespace {

using nlohmann::json;

// The server's A1111 route: settings from the request layer, the body echoed
// with the defaults (serve.cpp a1111_txt2img, make_job).
void check_a1111(const json& body) {
  sdgen::A1111Request r;
  try {
    r = sdgen::parse_a1111_txt2img(body);
  } catch (const sdgen::ApiFieldError& e) {
    if (std::string(e.what()).empty()) std::abort();  // every refusal says why
    return;
  }
  const sdgen::Settings s = sdgen::resolve_settings({&r.layer});
  (void)sdgen::settings_json(s);
  if (r.seed && (!s.seed || *s.seed != *r.seed)) std::abort();
  if (!r.parameters.is_object() || !r.parameters.contains("steps")) std::abort();
  for (const auto& [key, value] : body.items())
    if (r.parameters.at(key) != value) std::abort();
  (void)r.parameters.dump(-1, ' ', false, json::error_handler_t::replace);
}

// The img2img route: the txt2img checks, plus images that were size-checked
// on their PNG header (never decoded here) and a strength in (0, 1].
void check_a1111_img2img(const json& body) {
  sdgen::A1111Img2ImgRequest r;
  try {
    r = sdgen::parse_a1111_img2img(body);
  } catch (const sdgen::ApiFieldError& e) {
    if (std::string(e.what()).empty()) std::abort();
    return;
  }
  if (r.init_image.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) std::abort();
  if (!r.mask.empty() && r.mask.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) std::abort();
  const sdgen::Settings s = sdgen::resolve_settings({&r.common.layer});
  (void)sdgen::settings_json(s);
  (void)r.common.parameters.dump(-1, ' ', false, json::error_handler_t::replace);
}

// A model name from a request: accepted names never reach outside the
// server's model list.
void check_model_name(const json& body) {
  if (!body.is_object() || !body.contains("model") || !body["model"].is_string()) return;
  const std::string name = body["model"].get<std::string>();
  try {
    sdgen::check_api_model_name("model", name);
  } catch (const sdgen::ApiFieldError&) {
    return;
  }
  if (name.empty() || name.find('/') != std::string::npos || name.find("..") != std::string::npos ||
      name.find('\0') != std::string::npos)
    std::abort();
}

void check_openai(const json& body) {
  sdgen::OpenAIRequest r;
  try {
    r = sdgen::parse_openai_generation(body);
  } catch (const sdgen::ApiFieldError& e) {
    if (std::string(e.what()).empty()) std::abort();
    return;
  }
  if (r.prompt.empty() || r.n < 1 || r.n > 10) std::abort();
  if ((r.width == 0) != (r.height == 0) || r.width % 8 != 0 || r.height % 8 != 0) std::abort();
  // The size must pass the settings table's own checks (serve.cpp sets it).
  sdgen::SettingLayer layer("fuzz");
  layer.set("prompt", r.prompt);
  if (r.width > 0) {
    layer.set_checked(sdgen::setting("width"), r.width);
    layer.set_checked(sdgen::setting("height"), r.height);
  }
  (void)sdgen::resolve_settings({&layer});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const json body = json::parse(reinterpret_cast<const char*>(data),
                                reinterpret_cast<const char*>(data) + size, nullptr, false);
  if (body.is_discarded()) return 0;
  check_a1111(body);
  check_a1111_img2img(body);
  check_model_name(body);
  check_openai(body);
  return 0;
}
