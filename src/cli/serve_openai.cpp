// `sdgen serve`'s OpenAI Images API routes (serve_internal.h):
// POST /v1/images/generations and GET /v1/models, answered as
// api.openai.com answers them (its error object on failure).

#include <ctime>
#include <set>

#include "sdgen/base64.h"
#include "sdgen/image_api.h"
#include "serve_internal.h"

namespace sdgen::cli {

namespace {

using nlohmann::json;

// OpenAI's own image model names: clients written for OpenAI send them, and
// get the server's current model.
bool openai_model_alias(const std::string& name) {
  static const std::set<std::string> aliases = {"dall-e-2", "dall-e-3", "gpt-image-1"};
  return aliases.count(name) > 0;
}

}  // namespace

void Server::openai_generations(const ServeRequest& req, httplib::Response& res) {
  try {
    json body;
    try {
      body = json::parse(req.body);
    } catch (const json::parse_error& e) {
      throw HttpError{400, "",
                      std::string("We could not parse the JSON body of your request: ") + e.what()};
    }
    OpenAIRequest parsed;
    try {
      parsed = parse_openai_generation(body);
    } catch (const ApiFieldError& e) {
      throw HttpError{400, e.field(), e.what()};
    }
    // "model": one of the server's models (by the id /v1/models lists), or
    // one of OpenAI's names for the current one; anything else is OpenAI's 404.
    ModelChoice choice;
    if (body.contains("model") && body["model"].is_string() &&
        !openai_model_alias(body["model"].get<std::string>())) {
      const std::string name = body["model"].get<std::string>();
      try {
        choice.entry = find_model("model", name);
      } catch (const HttpError& e) {
        if (e.message.find("names a path") != std::string::npos ||
            e.message.find("is empty") != std::string::npos)
          throw HttpError{400, "model", e.message};
        send_json(res, 404,
                  {{"error",
                    {{"message",
                      "The model `" + name + "` does not exist or you do not have access to it."},
                     {"type", "invalid_request_error"},
                     {"param", nullptr},
                     {"code", "model_not_found"}}}});
        return;
      }
    }
    // The server's own settings (the model's and the command line's), with
    // the request's prompt, size and image count.
    SettingLayer layer("the request");
    layer.set("prompt", parsed.prompt);
    if (parsed.width > 0) {
      layer.set("width", parsed.width);
      layer.set("height", parsed.height);
    }
    layer.set("batch_size", 1);
    Job job;
    ServeImages images;
    try {
      images = generate(
          req, choice, [&] { return make_job(layer, run_.seed); }, parsed.n, job);
    } catch (HttpError& e) {
      if (e.status == 422) e.status = 400;
      throw;
    }
    json data = json::array();
    for (const auto& png : images.pngs) data.push_back({{"b64_json", base64_encode(png)}});
    send_json(res, 200, {{"created", static_cast<int64_t>(std::time(nullptr))}, {"data", data}});
  } catch (const HttpError& e) {
    send_openai_error(res, e);
  }
}

void Server::openai_models(httplib::Response& res) {
  json data = json::array();
  for (const auto& e : model_entries())
    data.push_back({{"id", e.name}, {"object", "model"}, {"created", 0}, {"owned_by", "sdgen"}});
  send_json(res, 200, {{"object", "list"}, {"data", data}});
}

}  // namespace sdgen::cli
