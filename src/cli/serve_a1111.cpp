// `sdgen serve`'s A1111 routes (/sdapi/v1/*, serve_internal.h): field names,
// defaults and answers as AUTOMATIC1111's modules/api/api.py and models.py
// define them. The bodies are read by sdgen/image_api.h; images are made by
// serve_generate.cpp.

#include <algorithm>

#include "resources.h"
#include "sdgen/a1111.h"
#include "sdgen/base64.h"
#include "sdgen/error.h"
#include "sdgen/image_api.h"
#include "sdgen/inpaint.h"
#include "sdgen/png_reader.h"
#include "serve_internal.h"

namespace sdgen::cli {

namespace {

using nlohmann::json;

// A request's PNG (already size-checked by the parser) as pixels [H, W, C].
torch::Tensor serve_pixels(const std::string& png, const std::string& field) {
  DecodedPng d;
  try {
    d = decode_png(png, field);
  } catch (const Error& e) {
    throw HttpError{422, field, one_line(e.what())};
  }
  return torch::from_blob(d.pixels.data(), {d.height, d.width, d.channels}, torch::kUInt8).clone();
}

// The init image as RGB: gray repeated, an alpha channel composited over
// white (A1111's images.flatten with its default img2img_background_color
// "#ffffff"; Pillow's alpha_composite rounding).
torch::Tensor serve_init_image(const std::string& png) {
  torch::Tensor p = serve_pixels(png, "init_images");
  const int64_t c = p.size(2);
  if (c == 2 || c == 4) {
    const auto color = p.narrow(2, 0, c - 1).to(torch::kInt32);
    const auto alpha = p.narrow(2, c - 1, 1).to(torch::kInt32);
    p = (color * alpha + (255 - alpha) * 255 + 127).div(255, "floor").to(torch::kUInt8);
  }
  if (p.size(2) == 1) p = p.repeat({1, 1, 3});
  return p.contiguous();
}

// The mask as gray [H, W]: A1111's create_binary_mask (processing.py) takes
// an RGBA mask's alpha when it is not all opaque (> 128: repaint), else the
// image's luma; inpainting_mask_invert flips it.
torch::Tensor serve_mask(const std::string& png, bool invert) {
  const torch::Tensor p = serve_pixels(png, "mask");
  torch::Tensor gray;
  if (p.size(2) == 4 && p.select(2, 3).min().item<uint8_t>() < 255)
    gray = (p.select(2, 3) > 128).to(torch::kUInt8) * 255;
  else
    gray = mask_to_gray(p);
  if (invert) gray = torch::rsub(gray.to(torch::kInt32), 255).to(torch::kUInt8);
  if (gray.max().item<uint8_t>() < 128)
    throw HttpError{422, "mask",
                    "the mask is all black (nothing to repaint); white marks what to repaint"};
  return gray.contiguous();
}

// The txt2img/img2img answer: the images, the body echoed, Processed.js().
json a1111_answer(const ServeImages& images, const json& parameters, const json& info) {
  json out = {{"images", json::array()}, {"parameters", parameters}};
  for (const auto& png : images.pngs) out["images"].push_back(base64_encode(png));
  out["info"] = info.dump(-1, ' ', false, json::error_handler_t::replace);
  return out;
}

}  // namespace

ModelChoice Server::a1111_model_choice(const A1111Request& parsed) const {
  ModelChoice choice;
  if (parsed.checkpoint) {
    choice.entry = find_model("override_settings.sd_model_checkpoint", *parsed.checkpoint);
    choice.keep = !parsed.restore_afterwards;
  }
  return choice;
}

// A1111's Processed.js(): the "info" string of a txt2img or img2img answer.
json Server::a1111_info(const Job& job, const ServeImages& images, const LoadedModel& model,
                        bool img2img) const {
  const Settings& s = job.settings;
  const size_t n = images.pngs.size();
  return {{"prompt", s.prompt},
          {"all_prompts", std::vector<std::string>(n, s.prompt)},
          {"negative_prompt", s.negative_prompt},
          {"all_negative_prompts", std::vector<std::string>(n, s.negative_prompt)},
          {"seed", images.seeds.empty() ? s.seed.value_or(0) : images.seeds.front()},
          {"all_seeds", images.seeds},
          {"subseed", -1},
          {"all_subseeds", std::vector<int>(n, -1)},
          {"subseed_strength", 0},
          {"width", s.width},
          {"height", s.height},
          {"sampler_name", sampler_info(s.sampler).a1111_label},
          {"cfg_scale", s.cfg_scale},
          {"steps", s.steps},
          {"batch_size", s.batch_size},
          {"restore_faces", false},
          {"face_restoration_model", nullptr},
          {"sd_model_name", model.name},
          {"sd_model_hash", model.hash10},
          {"sd_vae_name", model.vae_name.empty() ? json(nullptr) : json(model.vae_name)},
          {"sd_vae_hash", model.vae_hash10.empty() ? json(nullptr) : json(model.vae_hash10)},
          {"seed_resize_from_w", -1},
          {"seed_resize_from_h", -1},
          {"denoising_strength", img2img ? json(s.strength) : json(nullptr)},
          {"extra_generation_params", json::object()},
          {"index_of_first_image", 0},
          {"infotexts", images.infotexts},
          {"styles", json::array()},
          {"job_timestamp", serve_timestamp()},
          {"clip_skip", s.clip_skip},
          // A 9-channel UNet conditions on the image and mask (A1111's
          // img2img_image_conditioning for an inpainting model).
          {"is_using_inpainting_conditioning", img2img && model.unet_in_channels == 9},
          {"version", SDGEN_VERSION}};
}

void Server::a1111_txt2img(const ServeRequest& req, httplib::Response& res) {
  try {
    const json body = parse_a1111_body(req.body);
    A1111Request parsed;
    try {
      parsed = parse_a1111_txt2img(body);
    } catch (const ApiFieldError& e) {
      throw HttpError{422, e.field(), e.what()};
    }
    const ModelChoice choice = a1111_model_choice(parsed);
    Job job;
    const ServeImages images = generate(
        req, choice, [&] { return make_job(parsed.layer, parsed.seed); }, 0, job);
    send_json(res, 200,
              a1111_answer(images, parsed.parameters, a1111_info(job, images, loaded(), false)));
  } catch (const HttpError& e) {
    send_a1111_error(res, e);
  }
}

void Server::a1111_img2img(const ServeRequest& req, httplib::Response& res) {
  try {
    const json body = parse_a1111_body(req.body);
    A1111Img2ImgRequest parsed;
    try {
      parsed = parse_a1111_img2img(body);
    } catch (const ApiFieldError& e) {
      throw HttpError{422, e.field(), e.what()};
    }
    // Decoded before the queue: a bad image costs no turn.
    const torch::Tensor init = serve_init_image(parsed.init_image);
    const torch::Tensor mask =
        parsed.mask.empty() ? torch::Tensor() : serve_mask(parsed.mask, parsed.invert_mask);
    const ModelChoice choice = a1111_model_choice(parsed.common);
    // The init image is resized to width x height (resize_mode 0, "just
    // resize"; the pipeline's bicubic resize, as sdgen --init-image -W -H).
    const auto make = [&] {
      Job job = make_job(parsed.common.layer, parsed.common.seed);
      job.request.init_image = init;
      job.settings.init_image = "init image";  // no file: only its A1111 fields follow
      if (mask.defined()) {
        job.request.mask = mask;
        job.settings.mask = "mask";
      }
      return job;
    };
    Job job;
    const ServeImages images = generate(req, choice, make, 0, job);
    send_json(
        res, 200,
        a1111_answer(images, parsed.common.parameters, a1111_info(job, images, loaded(), true)));
  } catch (const HttpError& e) {
    send_a1111_error(res, e);
  }
}

void Server::a1111_options_get(httplib::Response& res) {
  const LoadedModel model = loaded();
  std::string checkpoint;
  Settings s;
  {
    std::lock_guard<std::mutex> lock(model_mutex_);
    checkpoint = current_.path == model.path ? model.title() : current_.name;
    s = resolve_settings({&cli_, &options_layer_});
  }
  send_json(res, 200,
            {{"sd_model_checkpoint", checkpoint},
             {"sd_vae", model.vae_name.empty() ? "Automatic" : model.vae_name},
             {"CLIP_stop_at_last_layers", s.clip_skip},
             {"eta_noise_seed_delta", 0},
             {"samples_format", "png"}});
}

// A1111's POST /sdapi/v1/options: the options override_settings takes, kept
// for the requests that follow; a new sd_model_checkpoint is loaded at once,
// in the queue's order.
void Server::a1111_options_post(const ServeRequest& req, httplib::Response& res) {
  try {
    const json body = parse_a1111_body(req.body);
    if (!body.is_object()) throw HttpError{422, "", "the options must be a JSON object"};
    A1111Request parsed;
    try {
      parsed = parse_a1111_txt2img({{"override_settings", body}});
    } catch (const ApiFieldError& e) {
      const std::string prefix = "override_settings.";
      std::string field = e.field();
      if (field.rfind(prefix, 0) == 0) field = field.substr(prefix.size());
      throw HttpError{422, field, e.what()};
    }
    ModelChoice choice;
    if (parsed.checkpoint) {
      choice.entry = find_model("sd_model_checkpoint", *parsed.checkpoint);
      choice.keep = true;
    }
    if (!turns_.wait()) throw HttpError{503, "", "the queue is full; try again later"};
    struct TurnDone {
      FifoTurns& turns;
      ~TurnDone() { turns.done(); }
    } turn_done{turns_};
    model_thread_.run([&] { use_model(choice); });
    if (parsed.layer.has("clip_skip")) {
      std::lock_guard<std::mutex> lock(model_mutex_);
      options_layer_.set("clip_skip", resolve_settings({&parsed.layer}).clip_skip);
    }
    send_json(res, 200, nullptr);
  } catch (const HttpError& e) {
    send_a1111_error(res, e);
  }
}

void Server::a1111_sd_models(httplib::Response& res) {
  const LoadedModel model = loaded();
  json list = json::array();
  for (const auto& e : model_entries()) {
    const bool is_loaded = e.path == model.path;
    list.push_back({{"title", is_loaded ? model.title() : e.name},
                    {"model_name", e.name},
                    {"hash", is_loaded && !model.hash10.empty() ? json(model.hash10) : json()},
                    {"sha256", nullptr},
                    {"filename", e.file},  // the entry's name only: no server paths
                    {"config", nullptr}});
  }
  send_json(res, 200, list);
}

// A1111's /sdapi/v1/progress (api.py progressapi): the share done of the
// request's batches and of the current batch's steps, plus 0.01 as A1111
// adds, and the time left at that rate. current_image stays null: a preview
// would decode the latents on the model's device while the request owns it.
void Server::a1111_progress(const httplib::Request&, httplib::Response& res) {
  ProgressState p;
  {
    std::lock_guard<std::mutex> lock(progress_mutex_);
    p = progress_;
  }
  const json state = {{"skipped", p.skipped},
                      {"interrupted", p.interrupted},
                      {"stopping_generation", false},
                      {"job", p.job},
                      {"job_count", p.busy ? p.job_count : 0},
                      {"job_timestamp", p.job_timestamp},
                      {"job_no", p.job_no},
                      {"sampling_step", p.sampling_step},
                      {"sampling_steps", p.sampling_steps}};
  double progress = 0, eta_relative = 0;
  if (p.busy && p.job_count > 0) {
    progress = 0.01 + static_cast<double>(p.job_no) / p.job_count;
    if (p.sampling_steps > 0) progress += 1.0 / p.job_count * p.sampling_step / p.sampling_steps;
    const double elapsed = std::chrono::duration<double>(ServeClock::now() - p.start).count();
    eta_relative = elapsed / progress - elapsed;
    progress = std::min(progress, 1.0);
  }
  send_json(res, 200,
            {{"progress", progress},
             {"eta_relative", eta_relative},
             {"state", state},
             {"current_image", nullptr},
             {"textinfo", nullptr}});
}

}  // namespace sdgen::cli
