// `sdgen serve`'s turns on the model (serve_internal.h): the FIFO queue, the
// models a request may choose and the switch between them, the generation of
// a request's batches with /sdapi/v1/progress, interrupt and skip, and the
// check that a queued request's client is still there.

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>

#include "resources.h"
#include "sdgen/a1111.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/interrupt.h"
#include "sdgen/rng.h"
#include "sdgen/runtime.h"
#include "serve_internal.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

namespace {

// Thrown by the step callback: /sdapi/v1/skip (the batch is dropped, the next
// one made) or /sdapi/v1/interrupt (the request ends with what it has).
struct ServeStopImage {
  bool skip;
};

// "127.0.0.1" / "::1" and the port of a socket address.
std::pair<std::string, int> serve_address(const sockaddr_storage& a) {
  char text[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(a);
    ::inet_ntop(AF_INET, &v4.sin_addr, text, sizeof text);
    return {text, ntohs(v4.sin_port)};
  }
  if (a.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a);
    ::inet_ntop(AF_INET6, &v6.sin6_addr, text, sizeof text);
    return {text, ntohs(v6.sin6_port)};
  }
  return {"", -1};
}

}  // namespace

bool FifoTurns::wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (waiting_ >= limit_) return false;
  const uint64_t ticket = next_ticket_++;
  ++waiting_;
  changed_.wait(lock, [&] { return serving_ == ticket; });
  --waiting_;
  return true;
}

void FifoTurns::done() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++serving_;
  changed_.notify_all();
}

int FifoTurns::waiting() {
  std::lock_guard<std::mutex> lock(mutex_);
  return waiting_;
}

void ModelThread::run(const std::function<void()>& task) {
  std::lock_guard<std::mutex> one_caller(run_mutex_);
  std::exception_ptr error;
  thread_.submit([&] {
    try {
      // The OpenMP team takes --threads (at::set_num_threads set it on the
      // main thread at start-up) before any operator runs.
      at::init_num_threads();
      task();
    } catch (...) {
      error = std::current_exception();
    }
  });
  thread_.wait_idle();
  if (error) std::rethrow_exception(error);
}

// cpp-httplib 0.11 gives a handler neither its socket nor a way to ask
// whether the client is still there (later versions have
// Request::is_connection_closed). The connection's socket is still open in
// this process while its handler runs, so it is the descriptor whose local
// and peer addresses are the request's.
int connection_socket(const httplib::Request& req) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || end == entry->d_name || fd < 0) continue;
    sockaddr_storage peer{}, local{};
    socklen_t peer_len = sizeof peer, local_len = sizeof local;
    if (::getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        ::getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0)
      continue;
    const auto [peer_addr, peer_port] = serve_address(peer);
    const auto [local_addr, local_port] = serve_address(local);
    if (peer_port == req.remote_port && local_port == req.local_port &&
        peer_addr == req.remote_addr) {
      found = static_cast<int>(fd);
      break;
    }
  }
  ::closedir(dir);
  return found;
}

// A closed connection reads as end of file (0) or an error such as
// ECONNRESET; an open one has nothing to read (EAGAIN) or a next request.
bool client_hung_up(int socket) {
  char byte;
  const ssize_t n = ::recv(socket, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) return false;
  if (n == 0) return true;
  return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

std::vector<ModelEntry> Server::model_entries() const {
  std::vector<ModelEntry> out{startup_};
  if (options_.models_dir.empty()) return out;
  std::error_code ec;
  std::vector<fs::path> paths;
  for (auto it = fs::directory_iterator(options_.models_dir, ec);
       !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const fs::path& p = it->path();
    if (p.filename().string().rfind('.', 0) == 0) continue;  // hidden
    if (it->is_directory(ec) || (it->is_regular_file(ec) && p.extension() == ".safetensors"))
      paths.push_back(p);
  }
  std::sort(paths.begin(), paths.end());
  for (const auto& p : paths) {
    if (fs::equivalent(p, startup_.path, ec)) continue;
    out.push_back({a1111_model_name(p.string()), p.filename().string(), p.string()});
  }
  return out;
}

ModelEntry Server::find_model(const std::string& field, const std::string& name) const {
  try {
    check_api_model_name(field, name);
  } catch (const ApiFieldError& e) {
    throw HttpError{422, field, e.what()};
  }
  const LoadedModel now = loaded();
  std::string names;
  for (const auto& e : model_entries()) {
    // A1111's titles: "NAME [HASH]" (the hash is known for the loaded model only).
    const bool titled = name.size() > e.name.size() + 2 &&
                        name.compare(0, e.name.size() + 2, e.name + " [") == 0 &&
                        name.back() == ']';
    if (name == e.name || name == e.file || titled || (e.path == now.path && name == now.title()))
      return e;
    names += (names.empty() ? "" : ", ") + e.name;
  }
  throw HttpError{
      422, field,
      field + " '" + name + "': no such model; the server has " + names +
          (options_.models_dir.empty() ? " (start it with --models-dir DIR for more)" : "")};
}

LoadedModel Server::loaded() const {
  std::lock_guard<std::mutex> lock(model_mutex_);
  return loaded_;
}

void Server::switch_model(const ModelEntry& entry) {
  const std::string previous = session_ ? session_->model_path : "";
  if (!run_.quiet) std::cerr << "sdgen: loading model " << entry.name << std::endl;
  session_.reset();  // the old weights go first: two models need not fit at once
  const auto load = [this](const std::string& path) {
    Settings run = run_;
    run.model = path;
    auto session = std::make_unique<ModelSession>();
    session->device = device_;
    session->dtype = dtype_;
    load_session(*session, run, nullptr);
    session->loras->set_names_only(true);  // requests never name files
    session_ = std::move(session);
    const StableDiffusionModel& model = *session_->model;
    std::lock_guard<std::mutex> lock(model_mutex_);
    loaded_ = {session_->model_path,   session_->model_name,
               session_->model_hash10, session_->vae_name,
               session_->vae_hash10,   static_cast<int>(model.unet->config().in_channels)};
  };
  try {
    load(entry.path);
  } catch (const CliError& e) {
    // Back to the model before, so that the server keeps serving.
    try {
      if (!previous.empty()) load(previous);
    } catch (const CliError&) {
      ready_ = false;
    }
    throw HttpError{500, "", "cannot load model " + entry.name + ": " + one_line(e.what())};
  }
}

void Server::use_model(const ModelChoice& choice) {
  ModelEntry wanted;
  {
    std::lock_guard<std::mutex> lock(model_mutex_);
    wanted = choice.entry ? *choice.entry : current_;
  }
  if (!session_ || wanted.path != session_->model_path) switch_model(wanted);
  if (choice.entry && choice.keep) {
    std::lock_guard<std::mutex> lock(model_mutex_);
    current_ = wanted;
  }
}

Job Server::make_job(const SettingLayer& request_layer, std::optional<uint64_t> seed) const {
  Job job;
  job.settings = resolve_settings({&session_->model_layer, &cli_, &options_layer_, &request_layer});
  if (!seed) seed = random_seed();
  job.settings.seed = seed;
  job.request = request_from_settings(job.settings);
  return job;
}

ServeImages Server::generate(const ServeRequest& req, const ModelChoice& choice,
                             const JobMaker& make, int batch_count, Job& job) {
  if (!turns_.wait())
    throw HttpError{503, "",
                    "the queue is full (" + std::to_string(options_.queue_size) +
                        " requests waiting); try again later"};
  struct TurnDone {
    FifoTurns& turns;
    ~TurnDone() { turns.done(); }
  } turn_done{turns_};
  if (interrupted()) throw HttpError{503, "", "the server is shutting down"};
  if (req.socket >= 0 && client_hung_up(req.socket)) {
    metrics_.count_dropped();
    throw ClientGone{};
  }
  if (!session_ && !ready()) throw HttpError{503, "", "no model is loaded"};
  ServeImages out;
  model_thread_.run([&] { out = generate_turn(choice, make, batch_count, job); });
  serve_request_images = static_cast<int>(out.pngs.size());
  return out;
}

ServeImages Server::generate_turn(const ModelChoice& choice, const JobMaker& make,
                                  int batch_count, Job& job) {
  use_model(choice);
  try {
    job = make();
    prepare_job(*session_, job);
  } catch (const Error& e) {
    throw HttpError{422, "", one_line(e.what())};
  } catch (const c10::Error& e) {
    throw HttpError{422, "", one_line(e.what_without_backtrace())};
  }
  GenerationRequest& r = job.request;
  if (batch_count <= 0) batch_count = job.settings.batch_count;
  if (!run_.no_memory_check) {
    const std::string problem = job_memory_problem(*session_, job);
    if (!problem.empty()) throw HttpError{422, "", problem};
  }
  // A1111's shared.state for /sdapi/v1/progress, from this turn on.
  interrupt_requested_ = false;
  skip_requested_ = false;
  {
    std::lock_guard<std::mutex> lock(progress_mutex_);
    progress_ = ProgressState();
    progress_.busy = true;
    progress_.job = "request";
    progress_.job_count = batch_count;
    progress_.sampling_steps = r.steps;
    progress_.job_timestamp = serve_timestamp();
    progress_.start = ServeClock::now();
  }
  generating_ = true;
  struct ProgressDone {
    Server& server;
    ~ProgressDone() {
      server.generating_ = false;
      std::lock_guard<std::mutex> lock(server.progress_mutex_);
      server.progress_.busy = false;
      server.progress_.job_count = 0;
    }
  } progress_done{*this};

  const bool stop_on_signal = options_.on_signal == "interrupt";
  const auto on_step = [this, stop_on_signal](const StepInfo& info, const torch::Tensor&) {
    {
      std::lock_guard<std::mutex> lock(progress_mutex_);
      progress_.sampling_step = std::min(info.index + 1, info.total);
      progress_.sampling_steps = info.total;
    }
    if (stop_on_signal) throw_if_interrupted();
    if (interrupt_requested_) throw ServeStopImage{false};
    if (skip_requested_) throw ServeStopImage{true};
  };
  ServeImages out;
  const uint64_t base_seed = r.seed;
  for (int j = 0; j < batch_count; ++j) {
    if (interrupt_requested_) {
      out.interrupted = true;
      break;
    }
    {
      std::lock_guard<std::mutex> lock(progress_mutex_);
      progress_.job_no = j;
      progress_.sampling_step = 0;
    }
    r.seed = base_seed + static_cast<uint64_t>(j);
    job.settings.seed = r.seed;
    GenerationResult result;
    const auto t0 = ServeClock::now();
    try {
      result = generate_job(*session_, job, on_step);
    } catch (const ServeStopImage& stop) {
      std::lock_guard<std::mutex> lock(progress_mutex_);
      if (stop.skip) {
        skip_requested_ = false;
        progress_.skipped = true;
        ++out.skipped;
        continue;
      }
      progress_.interrupted = true;
      out.interrupted = true;
      break;
    } catch (const Interrupted&) {
      throw HttpError{503, "", "interrupted: the server is shutting down"};
    } catch (const std::exception& e) {
      throw HttpError{500, "", generation_error_text(e, *session_->model, memory_request(r))};
    }
    const double seconds = std::chrono::duration<double>(ServeClock::now() - t0).count();
    const GenerationTimings& t = result.timings;
    metrics_.count_batch(r.batch_size, seconds, t.sampling_s > 0 ? t.steps / t.sampling_s : 0);
    for (int pos = 0; pos < r.batch_size; ++pos) {
      const std::string params = image_parameters(*session_, job, pos);
      out.pngs.push_back(encode_png(result.images_u8[pos], {{"parameters", params}}));
      out.infotexts.push_back(params);
      out.seeds.push_back(r.seed);
    }
  }
  r.seed = base_seed;
  job.settings.seed = base_seed;
  return out;
}

}  // namespace sdgen::cli
