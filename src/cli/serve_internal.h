#pragma once

// What the files of `sdgen serve` share: serve.cpp (the HTTP server, its
// security and the routes), serve_generate.cpp (turns on the model, model
// switching), serve_a1111.cpp and serve_openai.cpp (the two APIs),
// serve_metrics.cpp (/metrics).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "background_writer.h"
#include "sdgen/image_api.h"
#include "serve.h"
#include "session.h"

namespace sdgen::cli {

using ServeClock = std::chrono::steady_clock;

// An answer other than 200 from a route: the HTTP status, the request field it
// is about ("" for none) and the message. Each API writes it in its own shape.
struct HttpError {
  int status;
  std::string field;
  std::string message;
};

// Thrown at a request's turn when its client has hung up: no work is done and
// nobody is answered.
struct ClientGone {};

// One generation at a time, in arrival order (a ticket lock), with at most
// `limit` requests waiting.
class FifoTurns {
 public:
  explicit FifoTurns(int limit) : limit_(limit) {}
  // Blocks until it is this caller's turn; false (at once) when the queue is full.
  bool wait();
  void done();
  int waiting();

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  uint64_t next_ticket_ = 0, serving_ = 0;
  int waiting_ = 0;
  int limit_;
};

// Every use of the model (the load, switches, generations) runs on this one
// thread, as the command line runs it on its main thread: one OpenMP team
// for the server's life instead of one per HTTP thread that held the turn,
// and one thread for CUDA's current stream and captured graphs.
class ModelThread {
 public:
  // Runs `task` there (the thread starts on the first call) and waits for it;
  // what it throws is rethrown here. One caller at a time.
  void run(const std::function<void()>& task);

 private:
  std::mutex run_mutex_;        // one run() at a time
  BackgroundWriter thread_{1};  // the thread, and its one task at a time
};

// The images of one request, PNGs with their parameters text.
struct ServeImages {
  std::vector<std::string> pngs, infotexts;
  std::vector<uint64_t> seeds;  // each image's "Seed"
  bool interrupted = false;     // /sdapi/v1/interrupt stopped the request
  int skipped = 0;              // batches /sdapi/v1/skip dropped
};

// A model the server may load: the --model it started with, and each entry of
// --models-dir (a model folder or a .safetensors file).
struct ModelEntry {
  std::string name;  // a1111_model_name: what requests call it
  std::string file;  // the entry's file or folder name, as sd-models lists it
  std::string path;  // where it loads from (never shown to clients)
};

// The loaded model as the listing routes show it; copied under a mutex,
// since a switch replaces the session while they answer.
struct LoadedModel {
  std::string path, name, hash10, vae_name, vae_hash10;
  int unet_in_channels = 4;
  std::string title() const { return name + (hash10.empty() ? "" : " [" + hash10 + "]"); }
};

// What /sdapi/v1/progress reports (A1111's shared.state).
struct ProgressState {
  bool busy = false;
  int job_count = 0, job_no = 0, sampling_step = 0, sampling_steps = 0;
  std::string job, job_timestamp = "0";
  ServeClock::time_point start;
  bool interrupted = false, skipped = false;
};

// The counters and gauges of /metrics (Prometheus text format 0.0.4).
class ServeMetrics {
 public:
  void count_request(const std::string& route, int status);
  // One batch: its image count, wall seconds and UNet steps per second.
  void count_batch(int images, double seconds, double steps_per_second);
  void count_dropped();  // a queued request whose client hung up
  std::string render(int queue_depth, bool generating, const torch::Device& device) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  uint64_t images_ = 0, dropped_ = 0;
  double last_steps_per_second_ = 0;
  std::vector<uint64_t> image_buckets_;  // cumulative counts per kImageSecondsBuckets
  double image_seconds_sum_ = 0;
};

// A POST request with its body (read by the route, at most --max-body-mb) and
// its connection, to see at its turn whether the client is still there.
struct ServeRequest {
  const httplib::Request& http;
  std::string body;
  int socket = -1;
};

// A request's choice of model: override_settings.sd_model_checkpoint or
// OpenAI's "model" (nullopt: the server's current checkpoint); `keep`: it
// stays the current one afterwards (override_settings_restore_afterwards false).
struct ModelChoice {
  std::optional<ModelEntry> entry;
  bool keep = false;
};

class Server {
 public:
  Server(const CommandLine& command_line, const ServeOptions& options);
  ~Server();
  int run();

 private:
  // serve.cpp
  void add_routes();
  bool authorized(const httplib::Request& req) const;
  bool ready() const { return ready_.load(); }

  // serve_generate.cpp
  std::vector<ModelEntry> model_entries() const;
  // The entry a request names (field: the request's field); HttpError 422 when none.
  ModelEntry find_model(const std::string& field, const std::string& name) const;
  LoadedModel loaded() const;
  // The job of a request's settings layer over the model's and the command line's.
  Job make_job(const SettingLayer& request_layer, std::optional<uint64_t> seed) const;
  using JobMaker = std::function<Job()>;
  // Waits for the turn, loads the chosen model, makes the job (make_job runs
  // after the switch, so the model's own defaults apply) and generates
  // batch_count batches (<= 0: the job's batch_count); `done` gets the job as made.
  ServeImages generate(const ServeRequest& req, const ModelChoice& choice, const JobMaker& make,
                       int batch_count, Job& done);
  // generate's work once the turn is this request's, on the model thread.
  ServeImages generate_turn(const ModelChoice& choice, const JobMaker& make, int batch_count,
                            Job& done);
  // Loads `entry` in place of the loaded model (under the turn).
  void switch_model(const ModelEntry& entry);
  // Makes `choice` (or the current checkpoint) the loaded model; under the turn.
  void use_model(const ModelChoice& choice);

  // serve_a1111.cpp
  void a1111_txt2img(const ServeRequest& req, httplib::Response& res);
  void a1111_img2img(const ServeRequest& req, httplib::Response& res);
  void a1111_options_post(const ServeRequest& req, httplib::Response& res);
  void a1111_options_get(httplib::Response& res);
  void a1111_sd_models(httplib::Response& res);
  void a1111_progress(const httplib::Request& req, httplib::Response& res);
  nlohmann::json a1111_info(const Job& job, const ServeImages& images, const LoadedModel& model,
                            bool img2img) const;
  ModelChoice a1111_model_choice(const A1111Request& parsed) const;

  // serve_openai.cpp
  void openai_generations(const ServeRequest& req, httplib::Response& res);
  void openai_models(httplib::Response& res);

  SettingLayer cli_;
  Settings run_;
  ServeOptions options_;
  std::string api_key_digest_;                   // SHA-256 of the API key ("" = none)
  std::vector<std::string> basic_auth_digests_;  // SHA-256 of each "user:pass"
  std::unique_ptr<ModelSession> session_;        // touched only under the turn
  torch::Device device_ = torch::kCPU;
  torch::ScalarType dtype_ = torch::kFloat32;
  FifoTurns turns_;
  ModelThread model_thread_;  // runs each turn's generation
  httplib::Server http_;
  std::atomic<bool> ready_{false};
  std::set<std::string> routes_;  // the paths with handlers (metrics labels)

  ModelEntry startup_;              // the --model served first (set before ready_)
  mutable std::mutex model_mutex_;  // guards the three below
  LoadedModel loaded_;
  ModelEntry current_;                         // the checkpoint requests get unless they choose one
  SettingLayer options_layer_{"the options"};  // POST /sdapi/v1/options (clip skip)

  mutable std::mutex progress_mutex_;
  ProgressState progress_;
  std::atomic<bool> interrupt_requested_{false}, skip_requested_{false};
  std::atomic<bool> generating_{false};

  ServeMetrics metrics_;
  std::mutex log_mutex_;
  std::atomic<uint64_t> request_ids_{0};
};

// The images the request this thread serves answered with (its log line).
extern thread_local int serve_request_images;

void send_json(httplib::Response& res, int status, const nlohmann::json& body);
// FastAPI's error shape, as A1111 answers (422: a validation error list).
void send_a1111_error(httplib::Response& res, const HttpError& e);
// OpenAI's error object.
void send_openai_error(httplib::Response& res, const HttpError& e);
// A body as JSON; HttpError 422 when it is not.
nlohmann::json parse_a1111_body(const std::string& body);
// A1111's job_timestamp: local time as YYYYmmddHHMMSS.
std::string serve_timestamp();
// The socket of the connection `req` came on (found by its two addresses
// among this process's descriptors), -1 when not found.
int connection_socket(const httplib::Request& req);
// True when the client at the other end of `socket` has closed or reset it.
bool client_hung_up(int socket);

}  // namespace sdgen::cli
