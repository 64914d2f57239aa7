// `sdgen serve` (serve.h): an HTTP server (cpp-httplib) in front of one
// ModelSession. Requests take turns on the model in arrival order; the
// request bodies are read by sdgen/image_api.h, the images made and labelled
// by session.h exactly as the command line makes them.

#include "serve.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <iostream>
#include <mutex>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "resources.h"
#include "sdgen/a1111.h"
#include "sdgen/base64.h"
#include "sdgen/error.h"
#include "sdgen/image_api.h"
#include "sdgen/image_io.h"
#include "sdgen/interrupt.h"
#include "sdgen/png_reader.h"
#include "sdgen/rng.h"
#include "sdgen/runtime.h"
#include "session.h"

namespace sdgen::cli {

namespace {

using nlohmann::json;
using ServeClock = std::chrono::steady_clock;

// An answer other than 200 from a route: the HTTP status, the request field it
// is about ("" for none) and the message. Each API writes it in its own shape.
struct HttpError {
  int status;
  std::string field;
  std::string message;
};

// One generation at a time, in arrival order (a ticket lock), with at most
// `limit` requests waiting.
class FifoTurns {
 public:
  explicit FifoTurns(int limit) : limit_(limit) {}
  // Blocks until it is this caller's turn; false (at once) when the queue is full.
  bool wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (waiting_ >= limit_) return false;
    const uint64_t ticket = next_ticket_++;
    ++waiting_;
    changed_.wait(lock, [&] { return serving_ == ticket; });
    --waiting_;
    return true;
  }
  void done() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++serving_;
    changed_.notify_all();
  }
  int waiting() {
    std::lock_guard<std::mutex> lock(mutex_);
    return waiting_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  uint64_t next_ticket_ = 0, serving_ = 0;
  int waiting_ = 0;
  int limit_;
};

// The images of one request, PNGs with their parameters text.
struct Images {
  std::vector<std::string> pngs, infotexts;
  std::vector<uint64_t> seeds;  // each image's "Seed"
};

thread_local ServeClock::time_point request_start;

class Server {
 public:
  Server(const CommandLine& command_line, const ServeOptions& options)
      : cli_(command_line.layer),
        run_(command_line.settings),
        options_(options),
        turns_(options.queue_size) {}
  int run();

 private:
  void add_routes();
  bool ready() const { return ready_.load(); }
  // The job of a request's settings layer over the model's and the command line's.
  Job make_job(const SettingLayer& request_layer, std::optional<uint64_t> seed) const;
  // Waits for the model, then generates batch_count batches of the job.
  Images generate(Job& job, int batch_count);

  void a1111_txt2img(const httplib::Request& req, httplib::Response& res);
  void openai_generations(const httplib::Request& req, httplib::Response& res);
  json a1111_info(const Job& job, const Images& images) const;
  std::string model_title() const {
    return session_.model_name +
           (session_.model_hash10.empty() ? "" : " [" + session_.model_hash10 + "]");
  }

  SettingLayer cli_;
  Settings run_;
  ServeOptions options_;
  ModelSession session_;
  FifoTurns turns_;
  httplib::Server http_;
  std::atomic<bool> ready_{false};
  std::mutex log_mutex_;
};

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // A full queue, a model loading or switching: the client may try again
  // (RFC 9110 section 10.2.3).
  if (status == 503 && !res.has_header("Retry-After")) res.set_header("Retry-After", "1");
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// FastAPI's validation error, as A1111 answers a bad body (HTTP 422).
void send_a1111_error(httplib::Response& res, const HttpError& e) {
  json detail = {{"loc", e.field.empty() ? json::array({"body"}) : json::array({"body", e.field})},
                 {"msg", e.message},
                 {"type", "value_error"}};
  json body = {{"detail", json::array({detail})}, {"error", e.message}};
  if (e.status != 422) body = {{"detail", e.message}, {"error", e.message}};
  send_json(res, e.status, body);
}

// OpenAI's error object.
void send_openai_error(httplib::Response& res, const HttpError& e) {
  const std::string type = e.status >= 500 ? "server_error" : "invalid_request_error";
  send_json(res, e.status,
            {{"error",
              {{"message", e.message},
               {"type", type},
               {"param", e.field.empty() ? json(nullptr) : json(e.field)},
               {"code", e.status == 400 ? json("invalid_value") : json(nullptr)}}}});
}

json parse_body(const httplib::Request& req) {
  try {
    return json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw HttpError{422, "", std::string("the body is not JSON: ") + e.what()};
  }
}

std::string timestamp_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%d%H%M%S", &tm);
  return text;
}

Job Server::make_job(const SettingLayer& request_layer, std::optional<uint64_t> seed) const {
  Job job;
  job.settings = resolve_settings({&session_.model_layer, &cli_, &request_layer});
  if (!seed) seed = random_seed();
  job.settings.seed = seed;
  job.request = request_from_settings(job.settings);
  return job;
}

Images Server::generate(Job& job, int batch_count) {
  if (!turns_.wait())
    throw HttpError{503, "",
                    "the queue is full (" + std::to_string(options_.queue_size) +
                        " requests waiting); try again later"};
  struct TurnDone {
    FifoTurns& turns;
    ~TurnDone() { turns.done(); }
  } turn_done{turns_};
  if (interrupted()) throw HttpError{503, "", "the server is shutting down"};
  try {
    prepare_job(session_, job);
  } catch (const Error& e) {
    throw HttpError{422, "", one_line(e.what())};
  } catch (const c10::Error& e) {
    throw HttpError{422, "", one_line(e.what_without_backtrace())};
  }
  GenerationRequest& r = job.request;
  if (!run_.no_memory_check) {
    const std::string problem = job_memory_problem(session_, job);
    if (!problem.empty()) throw HttpError{422, "", problem};
  }
  const bool stop_on_signal = options_.on_signal == "interrupt";
  const auto on_step = [stop_on_signal](const StepInfo&, const torch::Tensor&) {
    if (stop_on_signal) throw_if_interrupted();
  };
  Images out;
  const uint64_t base_seed = r.seed;
  for (int j = 0; j < batch_count; ++j) {
    r.seed = base_seed + static_cast<uint64_t>(j);
    job.settings.seed = r.seed;
    GenerationResult result;
    try {
      result = generate_job(session_, job, on_step);
    } catch (const Interrupted&) {
      throw HttpError{503, "", "interrupted: the server is shutting down"};
    } catch (const std::exception& e) {
      throw HttpError{500, "", generation_error_text(e, *session_.model, memory_request(r))};
    }
    for (int pos = 0; pos < r.batch_size; ++pos) {
      const std::string params = image_parameters(session_, job, pos);
      out.pngs.push_back(encode_png(result.images_u8[pos], {{"parameters", params}}));
      out.infotexts.push_back(params);
      out.seeds.push_back(r.seed);
    }
  }
  r.seed = base_seed;
  job.settings.seed = base_seed;
  return out;
}

// A1111's Processed.js(): the "info" string of a txt2img response.
json Server::a1111_info(const Job& job, const Images& images) const {
  const Settings& s = job.settings;
  const size_t n = images.pngs.size();
  return {{"prompt", s.prompt},
          {"all_prompts", std::vector<std::string>(n, s.prompt)},
          {"negative_prompt", s.negative_prompt},
          {"all_negative_prompts", std::vector<std::string>(n, s.negative_prompt)},
          {"seed", images.seeds.empty() ? 0 : images.seeds.front()},
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
          {"sd_model_name", session_.model_name},
          {"sd_model_hash", session_.model_hash10},
          {"sd_vae_name", session_.vae_name.empty() ? json(nullptr) : json(session_.vae_name)},
          {"sd_vae_hash", session_.vae_hash10.empty() ? json(nullptr) : json(session_.vae_hash10)},
          {"seed_resize_from_w", -1},
          {"seed_resize_from_h", -1},
          {"denoising_strength", nullptr},
          {"extra_generation_params", json::object()},
          {"index_of_first_image", 0},
          {"infotexts", images.infotexts},
          {"styles", json::array()},
          {"job_timestamp", timestamp_now()},
          {"clip_skip", s.clip_skip},
          {"is_using_inpainting_conditioning", false},
          {"version", SDGEN_VERSION}};
}

void Server::a1111_txt2img(const httplib::Request& req, httplib::Response& res) {
  try {
    const json body = parse_body(req);
    A1111Request parsed;
    try {
      parsed = parse_a1111_txt2img(body);
    } catch (const ApiFieldError& e) {
      throw HttpError{422, e.field(), e.what()};
    }
    Job job = make_job(parsed.layer, parsed.seed);
    const Images images = generate(job, job.settings.batch_count);
    json out = {{"images", json::array()}, {"parameters", parsed.parameters}};
    for (const auto& png : images.pngs) out["images"].push_back(base64_encode(png));
    out["info"] = a1111_info(job, images).dump(-1, ' ', false, json::error_handler_t::replace);
    send_json(res, 200, out);
  } catch (const HttpError& e) {
    send_a1111_error(res, e);
  }
}

void Server::openai_generations(const httplib::Request& req, httplib::Response& res) {
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
    // The server's own settings (the model's and the command line's), with
    // the request's prompt, size and image count.
    SettingLayer layer("the request");
    layer.set("prompt", parsed.prompt);
    if (parsed.width > 0) {
      layer.set("width", parsed.width);
      layer.set("height", parsed.height);
    }
    layer.set("batch_size", 1);
    Job job = make_job(layer, run_.seed);
    Images images;
    try {
      images = generate(job, parsed.n);
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

void Server::add_routes() {
  // Routes that need the model answer 503 until it is loaded.
  const auto when_ready = [this](auto handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      if (!ready()) {
        res.set_header("Retry-After", "5");
        send_json(res, 503,
                  {{"detail", "the model is loading"}, {"error", "the model is loading"}});
        return;
      }
      try {
        handler(req, res);
      } catch (const std::exception& e) {
        send_json(res, 500, {{"detail", one_line(e.what())}, {"error", one_line(e.what())}});
      }
    };
  };
  http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (ready())
      send_json(res, 200, {{"status", "ok"}});
    else
      send_json(res, 503, {{"status", "loading"}});
  });
  http_.Post("/sdapi/v1/txt2img",
             when_ready([this](const auto& req, auto& res) { a1111_txt2img(req, res); }));
  http_.Post("/v1/images/generations",
             when_ready([this](const auto& req, auto& res) { openai_generations(req, res); }));
  // A1111's png-info: the text chunks of a base64 PNG (read without decoding
  // its pixels), "parameters" as "info" and parsed as "parameters".
  http_.Post("/sdapi/v1/png-info", [](const httplib::Request& req, httplib::Response& res) {
    try {
      const json body = parse_body(req);
      if (!body.is_object() || !body.contains("image") || !body["image"].is_string())
        throw HttpError{422, "image", "image must be a base64 PNG string"};
      PngText text;
      try {
        const std::string bytes = base64_decode(body["image"].get<std::string>());
        if (bytes.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) throw Error("image is not a PNG");
        text = png_text_chunks(bytes, "image");
      } catch (const Error& e) {
        throw HttpError{422, "image", one_line(e.what())};
      }
      std::string info;
      json items = json::object();
      for (const auto& [key, value] : text) {
        if (key == "parameters")
          info = value;
        else
          items[key] = value;
      }
      json parameters = json::object();
      if (!info.empty()) {
        const A1111Parameters p = parse_a1111_parameters(info);
        parameters["Prompt"] = p.prompt;
        parameters["Negative prompt"] = p.negative_prompt;
        for (const auto& [key, value] : p.fields) parameters[key] = value;
      }
      send_json(res, 200, {{"info", info}, {"items", items}, {"parameters", parameters}});
    } catch (const HttpError& e) {
      send_a1111_error(res, e);
    }
  });
  http_.Get("/sdapi/v1/samplers", [](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& info : sampler_registry())
      list.push_back({{"name", info.a1111_label},
                      {"aliases", json::array({info.name})},
                      {"options", json::object()}});
    send_json(res, 200, list);
  });
  http_.Get("/sdapi/v1/schedulers", [](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& [name, label] : std::vector<std::pair<std::string, std::string>>{
             {"automatic", "Automatic"}, {"karras", "Karras"}, {"normal", "Normal"}})
      list.push_back({{"name", name},
                      {"label", label},
                      {"aliases", nullptr},
                      {"default_rho", -1},
                      {"need_inner_model", false}});
    send_json(res, 200, list);
  });
  http_.Get("/sdapi/v1/sd-models",
            when_ready([this](const httplib::Request&, httplib::Response& res) {
              send_json(res, 200,
                        json::array({{{"title", model_title()},
                                      {"model_name", session_.model_name},
                                      {"hash", session_.model_hash10},
                                      {"sha256", nullptr},
                                      {"filename", session_.model_name},
                                      {"config", nullptr}}}));
            }));
  http_.Get("/sdapi/v1/options",
            when_ready([this](const httplib::Request&, httplib::Response& res) {
              const Settings s = resolve_settings({&session_.model_layer, &cli_});
              send_json(res, 200,
                        {{"sd_model_checkpoint", model_title()},
                         {"sd_vae", session_.vae_name.empty() ? "Automatic" : session_.vae_name},
                         {"CLIP_stop_at_last_layers", s.clip_skip},
                         {"eta_noise_seed_delta", 0},
                         {"samples_format", "png"}});
            }));
  http_.Get("/v1/models", when_ready([this](const httplib::Request&, httplib::Response& res) {
              send_json(res, 200,
                        {{"object", "list"},
                         {"data", json::array({{{"id", session_.model_name},
                                                {"object", "model"},
                                                {"created", 0},
                                                {"owned_by", "sdgen"}}})}});
            }));
}

int Server::run() {
  init_cpu_runtime(run_.threads);
  resolve_device(run_, session_.device, session_.dtype);
  http_.set_payload_max_length(static_cast<size_t>(options_.max_body_mb) << 20);
  http_.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
    request_start = ServeClock::now();
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Errors without a body of their own (no such route, a body too large) get one.
  http_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string what = res.status == 404   ? "no route " + req.method + " " + req.path
                             : res.status == 413 ? "the request body is larger than --max-body-mb"
                                                 : "HTTP error " + std::to_string(res.status);
    send_json(res, res.status, {{"detail", what}, {"error", what}});
  });
  // One JSON line per request on stderr.
  http_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    const double s = std::chrono::duration<double>(ServeClock::now() - request_start).count();
    const json line = {{"method", req.method},
                       {"path", req.path},
                       {"status", res.status},
                       {"seconds", std::round(s * 1e4) / 1e4}};
    std::lock_guard<std::mutex> lock(log_mutex_);
    std::cerr << line.dump(-1, ' ', false, json::error_handler_t::replace) << std::endl;
  });
  add_routes();
  if (!http_.bind_to_port(options_.host, options_.port))
    throw CliError(kExitUsage, "cannot listen on " + options_.host + ":" +
                                   std::to_string(options_.port) +
                                   " (in use, or not an address of this machine)");
  // The first SIGINT/SIGTERM sets a flag (sdgen/interrupt.h); the watcher
  // stops the listener, whose threads finish the requests they hold.
  install_interrupt_handlers(false);
  std::thread listener([this] { http_.listen_after_bind(); });
  std::atomic<bool> done{false};
  std::thread watcher([this, &done] {
    while (!done && !interrupted()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    http_.stop();
  });
  if (!run_.quiet)
    std::cerr << "sdgen: listening on http://" << options_.host << ":" << options_.port
              << ", loading the model" << std::endl;
  int code = kExitOk;
  try {
    load_session(session_, run_, nullptr);
    ready_ = true;
    if (!run_.quiet)
      std::cerr << "sdgen: serving " << session_.model_name << " on http://" << options_.host << ":"
                << options_.port << " (Ctrl-C to stop)" << std::endl;
  } catch (const CliError& e) {
    std::cerr << "sdgen: error: " << one_line(e.what()) << std::endl;
    code = e.code();
    done = true;
  }
  watcher.join();
  listener.join();
  if (code == kExitOk && !run_.quiet) std::cerr << "sdgen: stopped" << std::endl;
  return code;
}

}  // namespace

void add_serve_flags(CLI::App& app, ServeOptions& options) {
  app.add_option("--host", options.host, "Address to listen on (0.0.0.0: every interface)")
      ->default_str(options.host)
      ->group("Server");
  app.add_option("--port", options.port, "TCP port")
      ->default_str(std::to_string(options.port))
      ->check(CLI::Range(1, 65535))
      ->group("Server");
  app.add_option("--on-signal", options.on_signal,
                 "SIGINT/SIGTERM: finish the image being made, or interrupt it, then exit 0")
      ->default_str(options.on_signal)
      ->check(CLI::IsMember({"finish", "interrupt"}))
      ->group("Server");
  app.add_option("--queue-size", options.queue_size,
                 "Requests that may wait for the model; more are answered 503")
      ->default_str(std::to_string(options.queue_size))
      ->check(CLI::Range(1, 100000))
      ->group("Server");
  app.add_option("--max-body-mb", options.max_body_mb,
                 "Largest request body in MiB; larger ones are refused with 413")
      ->default_str(std::to_string(options.max_body_mb))
      ->check(CLI::Range(1, 4096))
      ->group("Server");
}

int run_serve(const CommandLine& command_line, const ServeOptions& options) {
  return Server(command_line, options).run();
}

}  // namespace sdgen::cli
