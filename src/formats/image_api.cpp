// The image web APIs' request bodies (sdgen/image_api.h).

#include "sdgen/image_api.h"

#include <cstdlib>
#include <set>

namespace sdgen {

namespace {

using nlohmann::json;

// A1111's txt2img request as modules/api/models.py generates it from
// StableDiffusionProcessingTxt2Img: every field with its default, echoed back
// as the response's "parameters" with the body's values over it.
json a1111_txt2img_defaults() {
  return {{"prompt", ""},
          {"negative_prompt", ""},
          {"styles", nullptr},
          {"seed", -1},
          {"subseed", -1},
          {"subseed_strength", 0},
          {"seed_resize_from_h", -1},
          {"seed_resize_from_w", -1},
          {"sampler_name", nullptr},
          {"scheduler", nullptr},
          {"batch_size", 1},
          {"n_iter", 1},
          {"steps", 50},
          {"cfg_scale", 7.0},
          {"width", 512},
          {"height", 512},
          {"restore_faces", nullptr},
          {"tiling", nullptr},
          {"do_not_save_samples", false},
          {"do_not_save_grid", false},
          {"eta", nullptr},
          {"denoising_strength", nullptr},
          {"override_settings", nullptr},
          {"override_settings_restore_afterwards", true},
          {"refiner_checkpoint", nullptr},
          {"enable_hr", false},
          {"sampler_index", "Euler"},
          {"script_name", nullptr},
          {"script_args", json::array()},
          {"send_images", true},
          {"save_images", false},
          {"alwayson_scripts", json::object()}};
}

// Fields that change the image in ways sdgen does not do: refused unless they
// hold the value that asks for nothing.
bool a1111_asks_for_nothing(const std::string& key, const json& v) {
  if (v.is_null()) return true;
  if (key == "enable_hr" || key == "restore_faces" || key == "tiling")
    return v.is_boolean() && !v.get<bool>();
  if (key == "subseed_strength") return v.is_number() && v.get<double>() == 0;
  if (key == "seed_resize_from_h" || key == "seed_resize_from_w")
    return v.is_number() && v.get<double>() <= 0;
  if (key == "styles" || key == "script_args") return v.is_array() && v.empty();
  if (key == "alwayson_scripts") return v.is_object() && v.empty();
  if (key == "script_name" || key == "refiner_checkpoint")
    return v.is_string() && v.get<std::string>().empty();
  return true;
}

// Settings the txt2img route never takes from a body: img2img's fields, and
// files on the server (the model and VAE are the server's).
bool a1111_txt2img_skips(const SettingSpec& spec) {
  static const std::set<std::string> img2img = {"init_images", "mask", "denoising_strength",
                                                "mask_blur"};
  return img2img.count(spec.api_key) > 0 || spec.allowed == "a path" || spec.name == "seed";
}

void set_api_value(SettingLayer& layer, const SettingSpec& spec, const std::string& field,
                   const json& value) {
  try {
    layer.set_checked(spec, value);
  } catch (const SettingError& e) {
    throw ApiFieldError(field, field + " " + value.dump() + ": " + e.what());
  }
}

}  // namespace

A1111Request parse_a1111_txt2img(const json& body) {
  if (!body.is_object()) throw ApiFieldError("", "the request body must be a JSON object");
  A1111Request out;
  SettingLayer& layer = out.layer;
  // A1111's defaults where sdgen's differ (processing.py, models.py): the
  // sampler comes from sampler_index ("Euler") when sampler_name is null.
  layer.set("steps", 50);
  layer.set("cfg_scale", 7.0);
  layer.set("width", 512);
  layer.set("height", 512);
  layer.set("sampler", to_string(Sampler::euler));

  const json defaults = a1111_txt2img_defaults();
  for (const auto& [key, value] : body.items())
    if (defaults.contains(key) && !a1111_asks_for_nothing(key, value))
      throw ApiFieldError(key, key + " " + value.dump() + ": not supported by sdgen serve");

  const json* overrides = nullptr;
  if (body.contains("override_settings") && !body["override_settings"].is_null()) {
    overrides = &body["override_settings"];
    if (!overrides->is_object())
      throw ApiFieldError("override_settings", "override_settings must be a JSON object");
  }
  for (const auto& spec : settings_table()) {
    if (spec.api_key.empty() || a1111_txt2img_skips(spec)) continue;
    const std::string prefix = "override_settings.";
    if (spec.api_key.compare(0, prefix.size(), prefix) == 0) {
      const std::string key = spec.api_key.substr(prefix.size());
      if (overrides && overrides->contains(key) && !(*overrides)[key].is_null())
        set_api_value(layer, spec, spec.api_key, (*overrides)[key]);
      continue;
    }
    if (body.contains(spec.api_key) && !body[spec.api_key].is_null())
      set_api_value(layer, spec, spec.api_key, body[spec.api_key]);
  }
  // sampler_name, else the older sampler_index.
  if ((!body.contains("sampler_name") || body["sampler_name"].is_null()) &&
      body.contains("sampler_index") && !body["sampler_index"].is_null())
    set_api_value(layer, setting("sampler"), "sampler_index", body["sampler_index"]);
  if (body.contains("n_iter") && !body["n_iter"].is_null())
    set_api_value(layer, setting("batch_count"), "n_iter", body["n_iter"]);
  // A1111: seed -1 (or any negative) draws a random seed.
  if (body.contains("seed") && !body["seed"].is_null()) {
    const json& v = body["seed"];
    if (!v.is_number_integer())
      throw ApiFieldError("seed", "seed " + v.dump() + ": must be a whole number (-1: random)");
    if (v.is_number_unsigned() || v.get<int64_t>() >= 0) {
      out.seed = v.get<uint64_t>();
      layer.set("seed", *out.seed);
    }
  }
  for (const char* text_field : {"prompt", "negative_prompt"})
    if (body.contains(text_field) && !body[text_field].is_null() && !body[text_field].is_string())
      throw ApiFieldError(text_field, std::string(text_field) + " must be a string");

  out.parameters = defaults;
  for (const auto& [key, value] : body.items()) out.parameters[key] = value;
  return out;
}

OpenAIRequest parse_openai_generation(const json& body) {
  if (!body.is_object()) throw ApiFieldError("", "the request body must be a JSON object");
  static const std::set<std::string> known = {"prompt", "n",    "size",    "response_format",
                                              "model",  "user", "quality", "style"};
  for (const auto& [key, value] : body.items())
    if (!known.count(key))
      throw ApiFieldError(key, "Unrecognized request argument supplied: " + key);
  OpenAIRequest out;
  if (!body.contains("prompt") || body["prompt"].is_null())
    throw ApiFieldError("prompt", "Missing required parameter: 'prompt'.");
  if (!body["prompt"].is_string() || body["prompt"].get<std::string>().empty())
    throw ApiFieldError("prompt", "'prompt' must be a non-empty string.");
  out.prompt = body["prompt"].get<std::string>();
  if (body.contains("n") && !body["n"].is_null()) {
    const json& n = body["n"];
    if (!n.is_number_integer() || n.get<int64_t>() < 1 || n.get<int64_t>() > 10)
      throw ApiFieldError("n", n.dump() +
                                   " is not a valid value for 'n': it must be an integer "
                                   "from 1 to 10.");
    out.n = n.get<int>();
  }
  if (body.contains("response_format") && !body["response_format"].is_null()) {
    const json& f = body["response_format"];
    if (f == "url")
      throw ApiFieldError("response_format",
                          "response_format 'url' is not supported: sdgen serve keeps no image "
                          "files to link to; ask for 'b64_json'.");
    if (f != "b64_json")
      throw ApiFieldError("response_format", f.dump() +
                                                 " is not one of ['b64_json', 'url'] - "
                                                 "'response_format'");
  }
  if (body.contains("size") && !body["size"].is_null()) {
    const json& s = body["size"];
    const std::string text = s.is_string() ? s.get<std::string>() : s.dump();
    const size_t x = text.find('x');
    char* end = nullptr;
    long w = -1, h = -1;
    if (s.is_string() && x != std::string::npos && x > 0 && x + 1 < text.size() &&
        text.find_first_not_of("0123456789x") == std::string::npos && text.size() <= 11) {
      w = std::strtol(text.c_str(), &end, 10);
      h = std::strtol(text.c_str() + x + 1, &end, 10);
    }
    try {
      if (w < 0 || h < 0 || *end != '\0') throw SettingError("it must be \"WIDTHxHEIGHT\"");
      setting("width").check(json(w));
      setting("height").check(json(h));
    } catch (const SettingError& e) {
      throw ApiFieldError("size", "'" + text + "' is not a supported size - 'size': " + e.what() +
                                      " (a width and height in pixels, multiples of 8)");
    }
    out.width = static_cast<int>(w);
    out.height = static_cast<int>(h);
  }
  for (const char* field : {"model", "user", "quality", "style"})
    if (body.contains(field) && !body[field].is_null() && !body[field].is_string())
      throw ApiFieldError(field, std::string("'") + field + "' must be a string.");
  return out;
}

}  // namespace sdgen
