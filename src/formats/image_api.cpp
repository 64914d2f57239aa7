// The image web APIs' request bodies (sdgen/image_api.h).

#include "sdgen/image_api.h"

#include <cstdlib>
#include <set>

#include "sdgen/base64.h"
#include "sdgen/error.h"

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

// Settings the table never takes from a body: the images (decoded by the
// img2img parser), files on the server (the model and VAE are the server's;
// sd_model_checkpoint is a name, read below) and the seed (-1: random); and
// the img2img-only fields in a txt2img body (A1111 ignores
// denoising_strength there without hires fix).
bool a1111_table_skips(const SettingSpec& spec, bool img2img) {
  if (spec.api_key == "init_images" || spec.api_key == "mask") return true;
  if (!img2img && (spec.api_key == "denoising_strength" || spec.api_key == "mask_blur"))
    return true;
  return spec.allowed == "a path" || spec.name == "seed";
}

// override_settings keys that ask for what sdgen does anyway, with that value
// (A1111's shared.opts defaults): ignored. Any other value is refused.
bool a1111_harmless_override(const std::string& key, const json& v) {
  if (key == "eta_noise_seed_delta") return v.is_number() && v.get<double>() == 0;
  if (key == "samples_format") return v == "png";
  if (key == "sd_vae") return v == "Automatic";
  if (key == "enable_pnginfo") return v == true;
  // Not an A1111 option without an extension (A1111 has no NSFW filter of its
  // own), but its wiki's API example sends it: taken, as A1111 takes it.
  if (key == "filter_nsfw") return v.is_boolean();
  return false;
}

void set_api_value(SettingLayer& layer, const SettingSpec& spec, const std::string& field,
                   const json& value) {
  try {
    layer.set_checked(spec, value);
  } catch (const SettingError& e) {
    throw ApiFieldError(field, field + " " + value.dump() + ": " + e.what());
  }
}

// The fields txt2img and img2img share: the settings table's, the seed,
// n_iter, the samplers and override_settings; `defaults` is the route's
// model, echoed with the body's values over it.
A1111Request parse_a1111_common(const json& body, const json& defaults, bool img2img) {
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

  for (const auto& [key, value] : body.items())
    if (defaults.contains(key) && !a1111_asks_for_nothing(key, value))
      throw ApiFieldError(key, key + " " + value.dump() + ": not supported by sdgen serve");

  const json* overrides = nullptr;
  if (body.contains("override_settings") && !body["override_settings"].is_null()) {
    overrides = &body["override_settings"];
    if (!overrides->is_object())
      throw ApiFieldError("override_settings", "override_settings must be a JSON object");
    std::set<std::string> mapped;  // the table's override keys (CLIP_stop_at_last_layers)
    for (const auto& spec : settings_table())
      if (spec.api_key.rfind("override_settings.", 0) == 0 && spec.allowed != "a path")
        mapped.insert(spec.api_key.substr(18));
    for (const auto& [key, value] : overrides->items()) {
      const std::string field = "override_settings." + key;
      if (value.is_null() || mapped.count(key) || a1111_harmless_override(key, value)) continue;
      if (key == "sd_model_checkpoint") {
        if (!value.is_string())
          throw ApiFieldError(field, field + " must be a model's name as a string");
        check_api_model_name(field, value.get<std::string>());
        out.checkpoint = value.get<std::string>();
        continue;
      }
      throw ApiFieldError(field, field + " " + value.dump() +
                                     ": not supported by sdgen serve (it takes "
                                     "CLIP_stop_at_last_layers and sd_model_checkpoint)");
    }
  }
  if (body.contains("override_settings_restore_afterwards")) {
    const json& v = body["override_settings_restore_afterwards"];
    if (!v.is_null() && !v.is_boolean())
      throw ApiFieldError("override_settings_restore_afterwards",
                          "override_settings_restore_afterwards must be true or false");
    out.restore_afterwards = !v.is_boolean() || v.get<bool>();
  }
  for (const auto& spec : settings_table()) {
    if (spec.api_key.empty() || a1111_table_skips(spec, img2img)) continue;
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

// A1111's img2img request (StableDiffusionProcessingImg2Img's fields and
// defaults, modules/processing.py): txt2img's without hires fix, plus these.
json a1111_img2img_defaults() {
  json d = a1111_txt2img_defaults();
  d.erase("enable_hr");
  d["denoising_strength"] = 0.75;
  d.update({{"init_images", nullptr},
            {"resize_mode", 0},
            {"image_cfg_scale", nullptr},
            {"mask", nullptr},
            {"mask_blur_x", 4},
            {"mask_blur_y", 4},
            {"mask_blur", nullptr},
            {"mask_round", true},
            {"inpainting_fill", 0},
            {"inpaint_full_res", true},
            {"inpaint_full_res_padding", 0},
            {"inpainting_mask_invert", 0},
            {"initial_noise_multiplier", nullptr},
            {"latent_mask", nullptr},
            {"force_task_id", nullptr},
            {"include_init_images", false}});
  return d;
}

// A flag A1111 declares as bool but its UI sends as 0/1.
bool a1111_flag(const json& body, const std::string& key, bool fallback) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  const json& v = body[key];
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer() && (v.get<int64_t>() == 0 || v.get<int64_t>() == 1))
    return v.get<int64_t>() == 1;
  throw ApiFieldError(key, key + " " + v.dump() + ": must be true or false (or 1 or 0)");
}

// A small whole number from a set of choices; `fallback` when absent.
int a1111_choice(const json& body, const std::string& key, int fallback, int low, int high) {
  if (!body.contains(key) || body[key].is_null()) return fallback;
  const json& v = body[key];
  if (!v.is_number_integer() || v.get<int64_t>() < low || v.get<int64_t>() > high)
    throw ApiFieldError(key, key + " " + v.dump() + ": must be a whole number from " +
                                 std::to_string(low) + " to " + std::to_string(high));
  return v.get<int>();
}

uint32_t png_u32(const std::string& b, size_t at) {
  return (uint32_t{static_cast<uint8_t>(b[at])} << 24) |
         (uint32_t{static_cast<uint8_t>(b[at + 1])} << 16) |
         (uint32_t{static_cast<uint8_t>(b[at + 2])} << 8) |
         uint32_t{static_cast<uint8_t>(b[at + 3])};
}

// A base64 PNG of a request, decoded to its bytes but not to pixels: its size
// read from the IHDR chunk (which the PNG spec puts first) and bounded first.
std::string a1111_png(const json& v, const std::string& field) {
  if (!v.is_string()) throw ApiFieldError(field, field + " must be a base64 PNG string");
  std::string bytes;
  try {
    bytes = base64_decode(v.get<std::string>());
  } catch (const Error& e) {
    throw ApiFieldError(field, field + " is not valid base64: " + e.what());
  }
  if (bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0)
    throw ApiFieldError(field, field + " is not a PNG image (sdgen serve reads PNG only)");
  if (bytes.size() < 33 || bytes.compare(12, 4, "IHDR") != 0 || png_u32(bytes, 8) != 13)
    throw ApiFieldError(field, field + ": the PNG has no IHDR chunk first");
  const int64_t w = png_u32(bytes, 16), h = png_u32(bytes, 20);
  if (w < 8 || h < 8 || w * h > kMaxApiImagePixels)
    throw ApiFieldError(field, field + ": the PNG is " + std::to_string(w) + "x" +
                                   std::to_string(h) +
                                   " pixels; sdgen serve takes 8x8 up to 4096x4096 pixels");
  return bytes;
}

}  // namespace

void check_api_model_name(const std::string& field, const std::string& name) {
  if (name.empty()) throw ApiFieldError(field, field + " is empty; give a model's name");
  if (name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name.find("..") != std::string::npos || name.find('\0') != std::string::npos)
    throw ApiFieldError(field, field +
                                   " names a path; requests name models only as "
                                   "/sdapi/v1/sd-models lists them (no '/', '\\' or '..')");
}

A1111Request parse_a1111_txt2img(const json& body) {
  return parse_a1111_common(body, a1111_txt2img_defaults(), false);
}

A1111Img2ImgRequest parse_a1111_img2img(const json& body) {
  A1111Img2ImgRequest out;
  out.common = parse_a1111_common(body, a1111_img2img_defaults(), true);
  SettingLayer& layer = out.common.layer;
  if (!body.contains("denoising_strength") || body["denoising_strength"].is_null())
    layer.set("strength", 0.75);

  if (!body.contains("init_images") || !body["init_images"].is_array() ||
      body["init_images"].empty())
    throw ApiFieldError("init_images", "init_images must be a list of one base64 PNG");
  if (body["init_images"].size() > 1)
    throw ApiFieldError("init_images", "init_images holds " +
                                           std::to_string(body["init_images"].size()) +
                                           " images; sdgen serve takes one per request");
  out.init_image = a1111_png(body["init_images"][0], "init_images");

  const int resize_mode = a1111_choice(body, "resize_mode", 0, 0, 3);
  if (resize_mode != 0)
    throw ApiFieldError("resize_mode", "resize_mode " + std::to_string(resize_mode) +
                                           " (crop and resize, resize and fill, latent upscale) "
                                           "is not supported; 0 (just resize) is");
  const int fill = a1111_choice(body, "inpainting_fill", 0, 0, 3);
  if (fill > 1)
    throw ApiFieldError("inpainting_fill",
                        "inpainting_fill " + std::to_string(fill) +
                            " (latent noise, latent nothing) is not supported; 0 and 1 start "
                            "from the original image");
  for (const char* field : {"latent_mask"})
    if (body.contains(field) && !body[field].is_null())
      throw ApiFieldError(field, std::string(field) + ": not supported by sdgen serve");
  if (!a1111_flag(body, "mask_round", true))
    throw ApiFieldError("mask_round", "mask_round false is not supported (the mask is binarized)");
  if (body.contains("initial_noise_multiplier") && !body["initial_noise_multiplier"].is_null() &&
      body["initial_noise_multiplier"] != 1 && body["initial_noise_multiplier"] != 1.0)
    throw ApiFieldError("initial_noise_multiplier",
                        "initial_noise_multiplier other than 1 is not supported");
  for (const char* field : {"image_cfg_scale", "inpaint_full_res_padding"})
    if (body.contains(field) && !body[field].is_null() && !body[field].is_number())
      throw ApiFieldError(field, std::string(field) + " must be a number");
  // mask_blur, else mask_blur_x / mask_blur_y (equal: sdgen blurs both ways alike).
  if (!body.contains("mask_blur") || body["mask_blur"].is_null()) {
    const int x = a1111_choice(body, "mask_blur_x", 4, 0, 64);
    const int y = a1111_choice(body, "mask_blur_y", 4, 0, 64);
    if (x != y)
      throw ApiFieldError("mask_blur_x", "mask_blur_x " + std::to_string(x) + " and mask_blur_y " +
                                             std::to_string(y) +
                                             " differ; sdgen blurs the mask alike both ways");
    layer.set("mask_blur", x);
  }
  if (body.contains("mask") && !body["mask"].is_null()) {
    out.mask = a1111_png(body["mask"], "mask");
    if (a1111_flag(body, "inpaint_full_res", false))
      throw ApiFieldError("inpaint_full_res",
                          "inpaint_full_res true (inpaint only the masked area at full "
                          "resolution) is not supported; send false: the whole picture is "
                          "inpainted");
    out.invert_mask = a1111_flag(body, "inpainting_mask_invert", false);
    layer.set("paste_back", true);
  }
  // A1111's img2img answer echoes the images only when asked to.
  if (!a1111_flag(body, "include_init_images", false)) {
    out.common.parameters["init_images"] = nullptr;
    out.common.parameters["mask"] = nullptr;
  }
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
