// `sdgen serve` (serve.h): an HTTP server (cpp-httplib) in front of one
// ModelSession. This file: the routes, the request body limit, API keys and
// basic auth, the log line per request, the start and the stop. The routes'
// work is in serve_a1111.cpp, serve_openai.cpp, serve_generate.cpp and
// serve_metrics.cpp (serve_internal.h).

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <thread>

#include "resources.h"
#include "sdgen/a1111.h"
#include "sdgen/base64.h"
#include "sdgen/error.h"
#include "sdgen/interrupt.h"
#include "sdgen/png_reader.h"
#include "sdgen/runtime.h"
#include "sdgen/sha256.h"
#include "serve_internal.h"

namespace sdgen::cli {

using nlohmann::json;

namespace {

struct ServeRequestLog {
  ServeClock::time_point start;
  uint64_t id = 0;
};
thread_local ServeRequestLog serve_request_log;

}  // namespace

thread_local int serve_request_images = 0;

namespace {

// Equal digests, compared in constant time (both are 64 hex digits).
bool same_digest(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

// The text after an Authorization scheme ("Bearer", "Basic"; case-insensitive,
// RFC 9110 section 11.1), or nullopt when the header is of another scheme.
std::optional<std::string> auth_credentials(const std::string& header, const std::string& scheme) {
  if (header.size() <= scheme.size() || header[scheme.size()] != ' ') return std::nullopt;
  for (size_t i = 0; i < scheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(header[i])) !=
        std::tolower(static_cast<unsigned char>(scheme[i])))
      return std::nullopt;
  std::string rest = header.substr(scheme.size() + 1);
  while (!rest.empty() && rest.front() == ' ') rest.erase(rest.begin());
  while (!rest.empty() && rest.back() == ' ') rest.pop_back();
  return rest;
}

// A1111's png-info: the text chunks of a base64 PNG (read without decoding
// its pixels), "parameters" as "info" and parsed as "parameters".
void a1111_png_info(const std::string& request_body, httplib::Response& res) {
  try {
    const json body = parse_a1111_body(request_body);
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
}

// Answers `res` and closes the connection, leaving the request's body (or
// the rest of it) unread: cpp-httplib 0.11 would keep the connection and read
// that body as the next request. The answer is written here; httplib's own
// write then fails on the shut socket.
void answer_and_close(const httplib::Request& req, httplib::Response& res) {
  res.set_header("Connection", "close");
  const int socket = connection_socket(req);
  if (socket < 0) return;  // httplib answers, and reads the rest as it would
  std::string out = "HTTP/1.1 " + std::to_string(res.status) +
                    (res.status == 401 ? " Unauthorized" : " Payload Too Large") + "\r\n";
  for (const auto& [key, value] : res.headers) out += key + ": " + value + "\r\n";
  out += "Content-Length: " + std::to_string(res.body.size()) + "\r\n\r\n" + res.body;
  for (size_t sent = 0; sent < out.size();) {
    const ssize_t n = ::send(socket, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  ::shutdown(socket, SHUT_RDWR);
}

// 413 for a body over the limit, before the rest of it is read.
void refuse_body(const httplib::Request& req, httplib::Response& res) {
  const std::string what = "the request body is larger than --max-body-mb";
  send_json(res, 413, {{"detail", what}, {"error", what}});
  answer_and_close(req, res);
}

}  // namespace

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  // A full queue, a model loading or switching: the client may try again
  // (RFC 9110 section 10.2.3).
  if (status == 503 && !res.has_header("Retry-After")) res.set_header("Retry-After", "1");
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_a1111_error(httplib::Response& res, const HttpError& e) {
  json detail = {{"loc", e.field.empty() ? json::array({"body"}) : json::array({"body", e.field})},
                 {"msg", e.message},
                 {"type", "value_error"}};
  json body = {{"detail", json::array({detail})}, {"error", e.message}};
  if (e.status != 422) body = {{"detail", e.message}, {"error", e.message}};
  send_json(res, e.status, body);
}

void send_openai_error(httplib::Response& res, const HttpError& e) {
  const std::string type = e.status >= 500 ? "server_error" : "invalid_request_error";
  send_json(res, e.status,
            {{"error",
              {{"message", e.message},
               {"type", type},
               {"param", e.field.empty() ? json(nullptr) : json(e.field)},
               {"code", e.status == 400 ? json("invalid_value") : json(nullptr)}}}});
}

json parse_a1111_body(const std::string& body) {
  try {
    return json::parse(body);
  } catch (const json::parse_error& e) {
    throw HttpError{422, "", std::string("the body is not JSON: ") + e.what()};
  }
}

std::string serve_timestamp() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  localtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof text, "%Y%m%d%H%M%S", &tm);
  return text;
}

Server::Server(const CommandLine& command_line, const ServeOptions& options)
    : cli_(command_line.layer),
      run_(command_line.settings),
      options_(options),
      turns_(options.queue_size) {
  // Only digests are kept: no copy of a secret stays in memory to leak.
  std::string key = options.api_key;
  if (key.empty())
    if (const char* env = std::getenv("SDGEN_API_KEY")) key = env;
  if (!key.empty()) api_key_digest_ = sha256_hex(key);
  std::string auth = options.api_auth;
  for (size_t start = 0; !auth.empty() && start <= auth.size();) {
    const size_t comma = std::min(auth.find(',', start), auth.size());
    const std::string pair = auth.substr(start, comma - start);
    if (pair.empty() || pair.find(':') == std::string::npos || pair.front() == ':')
      throw CliError(kExitUsage, "--api-auth: expected user:password[,user2:password2]");
    basic_auth_digests_.push_back(sha256_hex(pair));
    start = comma + 1;
  }
}

Server::~Server() = default;

bool Server::authorized(const httplib::Request& req) const {
  if (api_key_digest_.empty() && basic_auth_digests_.empty()) return true;
  const std::string header = req.get_header_value("Authorization");
  if (!api_key_digest_.empty())
    if (const auto token = auth_credentials(header, "Bearer"))
      return same_digest(sha256_hex(*token), api_key_digest_);
  if (!basic_auth_digests_.empty())
    if (const auto encoded = auth_credentials(header, "Basic")) {
      std::string pair;
      try {
        pair = base64_decode(*encoded);
      } catch (const Error&) {
        return false;
      }
      const std::string digest = sha256_hex(pair);
      bool ok = false;
      for (const auto& d : basic_auth_digests_) ok = same_digest(digest, d) || ok;  // all compared
      return ok;
    }
  return false;
}

void Server::add_routes() {
  const size_t body_limit = static_cast<size_t>(options_.max_body_mb) << 20;
  // Routes that need the model answer 503 until it is loaded; the body is
  // read in pieces (a chunked body has no length to check beforehand) and
  // refused with 413 once it passes --max-body-mb.
  const auto post = [this, body_limit](const std::string& path, bool needs_model, auto handler) {
    routes_.insert(path);
    http_.Post(path, [this, body_limit, needs_model, handler](const httplib::Request& req,
                                                              httplib::Response& res,
                                                              const httplib::ContentReader& read) {
      ServeRequest request{req, {}, -1};
      bool too_large = false;
      // A request with neither Content-Length nor a chunked body has no body
      // (RFC 9112 section 6.3; `curl -X POST .../interrupt`): cpp-httplib 0.11
      // would wait for the client to close the connection (5 s) instead.
      const bool has_body = req.has_header("Content-Length") ||
                            req.get_header_value("Transfer-Encoding").find("chunked") !=
                                std::string::npos;
      if (has_body)
        read([&](const char* data, size_t n) {
          if (request.body.size() + n > body_limit) return !(too_large = true);
          request.body.append(data, n);
          return true;
        });
      if (too_large) {
        refuse_body(req, res);
        return;
      }
      if (needs_model && !ready()) {
        send_json(res, 503,
                  {{"detail", "the model is loading"}, {"error", "the model is loading"}});
        return;
      }
      request.socket = connection_socket(req);
      try {
        handler(request, res);
      } catch (const ClientGone&) {
        res.status = 499;  // nginx's "client closed request": nobody reads it
      } catch (const std::exception& e) {
        send_json(res, 500, {{"detail", one_line(e.what())}, {"error", one_line(e.what())}});
      }
    });
  };
  const auto get = [this](const std::string& path, bool needs_model, auto handler) {
    routes_.insert(path);
    http_.Get(
        path, [this, needs_model, handler](const httplib::Request& req, httplib::Response& res) {
          if (needs_model && !ready()) {
            send_json(res, 503,
                      {{"detail", "the model is loading"}, {"error", "the model is loading"}});
            return;
          }
          try {
            handler(req, res);
          } catch (const std::exception& e) {
            send_json(res, 500, {{"detail", one_line(e.what())}, {"error", one_line(e.what())}});
          }
        });
  };
  get("/health", false, [this](const httplib::Request&, httplib::Response& res) {
    if (ready())
      send_json(res, 200, {{"status", "ok"}});
    else
      send_json(res, 503, {{"status", "loading"}});
  });
  get("/metrics", false, [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.render(turns_.waiting(), generating_, device_),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  post("/sdapi/v1/txt2img", true, [this](const auto& req, auto& res) { a1111_txt2img(req, res); });
  post("/sdapi/v1/img2img", true, [this](const auto& req, auto& res) { a1111_img2img(req, res); });
  post("/sdapi/v1/png-info", false,
       [](const ServeRequest& req, httplib::Response& res) { a1111_png_info(req.body, res); });
  post("/sdapi/v1/options", true,
       [this](const auto& req, auto& res) { a1111_options_post(req, res); });
  // A1111's interrupt and skip answer {} whether or not anything was running.
  post("/sdapi/v1/interrupt", false, [this](const ServeRequest&, httplib::Response& res) {
    if (generating_) interrupt_requested_ = true;
    send_json(res, 200, json::object());
  });
  post("/sdapi/v1/skip", false, [this](const ServeRequest&, httplib::Response& res) {
    if (generating_) skip_requested_ = true;
    send_json(res, 200, json::object());
  });
  post("/v1/images/generations", true,
       [this](const auto& req, auto& res) { openai_generations(req, res); });
  get("/sdapi/v1/progress", false,
      [this](const httplib::Request& req, httplib::Response& res) { a1111_progress(req, res); });
  get("/sdapi/v1/samplers", false, [](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& info : sampler_registry())
      list.push_back({{"name", info.a1111_label},
                      {"aliases", json::array({info.name})},
                      {"options", json::object()}});
    send_json(res, 200, list);
  });
  get("/sdapi/v1/schedulers", false, [](const httplib::Request&, httplib::Response& res) {
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
  get("/sdapi/v1/sd-models", true,
      [this](const httplib::Request&, httplib::Response& res) { a1111_sd_models(res); });
  get("/sdapi/v1/options", true,
      [this](const httplib::Request&, httplib::Response& res) { a1111_options_get(res); });
  get("/v1/models", true,
      [this](const httplib::Request&, httplib::Response& res) { openai_models(res); });
}

int Server::run() {
  init_cpu_runtime(run_.threads);
  resolve_device(run_, device_, dtype_);
  const size_t body_limit = static_cast<size_t>(options_.max_body_mb) << 20;
  http_.set_payload_max_length(body_limit);
  const bool auth = !api_key_digest_.empty() || !basic_auth_digests_.empty();
  // Before a body is read: the request's id and clock, the credentials
  // (every route but /health), and a declared length over the limit (413 at
  // once: the body is never read).
  http_.set_pre_routing_handler([this, auth, body_limit](const httplib::Request& req,
                                                         httplib::Response& res) {
    serve_request_log = {ServeClock::now(), ++request_ids_};
    serve_request_images = 0;
    res.set_header("X-Request-Id", std::to_string(serve_request_log.id));
    if (auth && req.path != "/health" && !authorized(req)) {
      if (!api_key_digest_.empty()) res.set_header("WWW-Authenticate", "Bearer realm=\"sdgen\"");
      if (!basic_auth_digests_.empty()) res.set_header("WWW-Authenticate", "Basic realm=\"sdgen\"");
      const std::string what = "missing or wrong credentials: send Authorization: " +
                               std::string(api_key_digest_.empty() ? "Basic" : "Bearer <API key>");
      send_json(res, 401, {{"detail", what}, {"error", what}});
      // A body sent with it is never read.
      if (req.get_header_value<uint64_t>("Content-Length") > 0 ||
          req.get_header_value("Transfer-Encoding") == "chunked")
        answer_and_close(req, res);
      return httplib::Server::HandlerResponse::Handled;
    }
    if (req.has_header("Content-Length") &&
        req.get_header_value<uint64_t>("Content-Length") > body_limit) {
      refuse_body(req, res);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // "Expect: 100-continue" (curl, for large bodies): a body over the limit
  // is refused before the client sends it.
  http_.set_expect_100_continue_handler(
      [this, body_limit](const httplib::Request& req, httplib::Response& res) {
        if (req.get_header_value<uint64_t>("Content-Length") <= body_limit) return 100;
        serve_request_log = {ServeClock::now(), ++request_ids_};
        send_json(res, 413,
                  {{"detail", "the request body is larger than --max-body-mb"},
                   {"error", "the request body is larger than --max-body-mb"}});
        return 413;
      });
  // Errors without a body of their own (no such route, a body too large) get one.
  http_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty() || res.status == 499) return;
    const std::string what = res.status == 404   ? "no route " + req.method + " " + req.path
                             : res.status == 413 ? "the request body is larger than --max-body-mb"
                                                 : "HTTP error " + std::to_string(res.status);
    send_json(res, res.status, {{"detail", what}, {"error", what}});
  });
  // One JSON line per request on stderr (never a header: no credentials),
  // and the request counter of /metrics.
  http_.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    const double s =
        std::chrono::duration<double>(ServeClock::now() - serve_request_log.start).count();
    const std::string route = routes_.count(req.path) ? req.path : "other";
    metrics_.count_request(route, res.status);
    // In this order: the fields before "id" are those of the first version.
    const nlohmann::ordered_json line = {{"method", req.method},
                                         {"path", req.path},
                                         {"seconds", std::round(s * 1e4) / 1e4},
                                         {"status", res.status},
                                         {"id", serve_request_log.id},
                                         {"images", serve_request_images},
                                         {"bytes_out", res.body.size()}};
    std::lock_guard<std::mutex> lock(log_mutex_);
    std::cerr << line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
              << std::endl;
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
    // On the model thread, as every later use of the model (ModelThread).
    model_thread_.run([this] {
      session_ = std::make_unique<ModelSession>();
      session_->device = device_;
      session_->dtype = dtype_;
      load_session(*session_, run_, nullptr);
      session_->loras->set_names_only(true);  // requests never name files
    });
    std::filesystem::path model_path =
        std::filesystem::path(session_->model_path).lexically_normal();
    if (model_path.filename().empty()) model_path = model_path.parent_path();
    startup_ = {session_->model_name, model_path.filename().string(), session_->model_path};
    {
      std::lock_guard<std::mutex> lock(model_mutex_);
      current_ = startup_;
      loaded_ = {
          session_->model_path,   session_->model_name,
          session_->model_hash10, session_->vae_name,
          session_->vae_hash10,   static_cast<int>(session_->model->unet->config().in_channels)};
    }
    ready_ = true;
    if (!run_.quiet)
      std::cerr << "sdgen: serving " << session_->model_name << " on http://" << options_.host
                << ":" << options_.port << " (Ctrl-C to stop)" << std::endl;
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
  app.add_option("--models-dir", options.models_dir,
                 "Folder of models (model folders, .safetensors files) requests may switch to "
                 "by name (sd_model_checkpoint, OpenAI's model)")
      ->check(CLI::ExistingDirectory)
      ->group("Server");
  app.add_option("--api-key", options.api_key,
                 "Require \"Authorization: Bearer KEY\" on every route but /health (or set "
                 "SDGEN_API_KEY, which other users cannot see in the process list)")
      ->group("Server");
  app.add_option("--api-auth", options.api_auth,
                 "Accept HTTP basic auth with these user:password[,user2:password2] pairs "
                 "(A1111's flag); required on every route but /health")
      ->group("Server");
}

int run_serve(const CommandLine& command_line, const ServeOptions& options) {
  return Server(command_line, options).run();
}

}  // namespace sdgen::cli
