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
  // override_settings.sd_model_checkpoint: a model by the name (or title)
  // /sdapi/v1/sd-models lists, never a path; nullopt: the server's current one.
  std::optional<std::string> checkpoint;
  // override_settings_restore_afterwards: false keeps the checkpoint for the
  // requests after this one (A1111's shared.opts stays changed).
  bool restore_afterwards = true;
};
// A txt2img body. Throws ApiFieldError naming the field: a value of the wrong
// type or out of range, an unknown sampler or scheduler, a field that asks for
// something sdgen does not do (enable_hr, restore_faces, subseeds, styles,
// scripts) or that would name a file on the server (a model or VAE other than
// the one loaded is refused by the server, not here).
// override_settings: CLIP_stop_at_last_layers and sd_model_checkpoint are
// taken, keys that ask for nothing sdgen does differently (eta_noise_seed_delta
// 0, samples_format "png", sd_vae "Automatic") are ignored, any other key is
// refused naming it ("override_settings.KEY").
A1111Request parse_a1111_txt2img(const nlohmann::json& body);

// The largest image a request may send, in pixels (4096 x 4096), checked on
// the PNG header before anything is decoded: a small PNG can claim a huge size.
constexpr int64_t kMaxApiImagePixels = int64_t{4096} * 4096;

struct A1111Img2ImgRequest {
  // The txt2img fields, with denoising_strength (default 0.75, A1111's) as
  // "strength" and mask_blur in the layer; "paste_back" set with a mask (A1111
  // always puts the original back outside the mask).
  A1111Request common;
  std::string init_image;    // PNG bytes (base64-decoded, size checked, not decoded)
  std::string mask;          // PNG bytes; "" when the request has none
  bool invert_mask = false;  // inpainting_mask_invert: repaint what the mask leaves black
};
// An img2img body (A1111's StableDiffusionImg2ImgProcessingAPI): the txt2img
// fields plus init_images (exactly one base64 PNG, a data: URL prefix
// allowed), denoising_strength, mask, mask_blur (or equal mask_blur_x and
// mask_blur_y), inpainting_mask_invert, resize_mode (0, "just resize", only),
// inpainting_fill (0 and 1 both start from the original image), include_init_images
// (echo them in "parameters"). Refused, naming the field: an image that is not
// base64 or not a PNG, one over kMaxApiImagePixels, inpaint_full_res true with
// a mask, latent_mask, and the other values that ask for what sdgen does not do.
A1111Img2ImgRequest parse_a1111_img2img(const nlohmann::json& body);

// A model named by a request (A1111's sd_model_checkpoint, OpenAI's "model"):
// refused with ApiFieldError(field) when it is empty or could name a file
// (holds '/', '\\', "..", or a NUL). The server then looks it up among its models.
void check_api_model_name(const std::string& field, const std::string& name);

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
