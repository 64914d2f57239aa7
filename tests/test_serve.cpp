// `sdgen serve` end to end: the real binary on the tiny model, called with
// httplib's client. /health answers 503 until the model is loaded, then 200;
// an A1111 txt2img image equals the command line's for the same settings
// (pixels, parameters text and bytes); the OpenAI route returns n images; bad
// sizes and unknown samplers get the documented errors; png-info reads the
// parameters back; SIGTERM lets the image being made finish and exits 0.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "sdgen/base64.h"
#include "sdgen/error.h"
#include "sdgen/image_api.h"
#include "sdgen/image_io.h"
#include "sdgen/png_reader.h"
#include "test_util.h"

#ifdef SDGEN_WITH_SERVE
#include <httplib.h>
#endif

namespace sdgen {
namespace {

// The request parsers and base64, without a server.
TEST(ImageApi, Base64RoundTrip) {
  for (const std::string& bytes :
       std::vector<std::string>{"", "a", "ab", "abc", "abcd", std::string("\0\xff\x10", 3)})
    EXPECT_EQ(base64_decode(base64_encode(bytes)), bytes);
  EXPECT_EQ(base64_encode("sdgen"), "c2RnZW4=");
  EXPECT_EQ(base64_decode("data:image/png;base64,c2Rn\nZW4"), "sdgen");
  EXPECT_THROW(base64_decode("c2R*"), Error);
  EXPECT_THROW(base64_decode("c"), Error);
  EXPECT_THROW(base64_decode("c2=Rn"), Error);
}

TEST(ImageApi, A1111DefaultsAndFields) {
  using nlohmann::json;
  const A1111Request empty = parse_a1111_txt2img(json::object());
  const Settings d = resolve_settings({&empty.layer});
  EXPECT_EQ(d.steps, 50);
  EXPECT_EQ(d.cfg_scale, 7.0);
  EXPECT_EQ(d.width, 512);
  EXPECT_EQ(d.sampler, Sampler::euler);
  EXPECT_FALSE(empty.seed);
  EXPECT_EQ(empty.parameters.at("seed"), -1);
  const A1111Request r = parse_a1111_txt2img(
      {{"prompt", "p"},
       {"seed", 5},
       {"sampler_name", "DPM++ 2M"},
       {"scheduler", "Karras"},
       {"n_iter", 3},
       {"sd_model_checkpoint", nullptr},
       {"override_settings", {{"CLIP_stop_at_last_layers", 2}, {"sd_model_checkpoint", "x"}}}});
  const Settings s = resolve_settings({&r.layer});
  EXPECT_EQ(s.prompt, "p");
  EXPECT_EQ(*r.seed, 5u);
  EXPECT_EQ(s.sampler, Sampler::dpmpp_2m);
  EXPECT_EQ(s.schedule, SigmaSchedule::karras);
  EXPECT_EQ(s.batch_count, 3);
  EXPECT_EQ(s.clip_skip, 2);
  EXPECT_TRUE(s.model.empty());  // requests never name files
  for (const auto& [field, body] : std::vector<std::pair<std::string, json>>{
           {"steps", {{"steps", 0}}},
           {"prompt", {{"prompt", 3}}},
           {"seed", {{"seed", "x"}}},
           {"enable_hr", {{"enable_hr", true}}},
           {"override_settings.CLIP_stop_at_last_layers",
            {{"override_settings", {{"CLIP_stop_at_last_layers", "two"}}}}},
           {"", json::array()}}) {
    try {
      parse_a1111_txt2img(body);
      ADD_FAILURE() << body.dump();
    } catch (const ApiFieldError& e) {
      EXPECT_EQ(e.field(), field) << e.what();
    }
  }
}

TEST(ImageApi, OpenAIFields) {
  using nlohmann::json;
  const OpenAIRequest r = parse_openai_generation({{"prompt", "p"}, {"n", 3}, {"size", "96x64"}});
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.width, 96);
  EXPECT_EQ(r.height, 64);
  EXPECT_EQ(parse_openai_generation({{"prompt", "p"}}).width, 0);
  for (const auto& [field, body] : std::vector<std::pair<std::string, json>>{
           {"prompt", json::object()},
           {"n", {{"prompt", "p"}, {"n", 0}}},
           {"size", {{"prompt", "p"}, {"size", "100x64"}}},
           {"size", {{"prompt", "p"}, {"size", "64x"}}},
           {"size", {{"prompt", "p"}, {"size", 64}}},
           {"response_format", {{"prompt", "p"}, {"response_format", "url"}}},
           {"stream", {{"prompt", "p"}, {"stream", true}}}}) {
    try {
      parse_openai_generation(body);
      ADD_FAILURE() << body.dump();
    } catch (const ApiFieldError& e) {
      EXPECT_EQ(e.field(), field) << e.what();
    }
  }
}

// A PNG header claiming w x h pixels (IHDR only: the parser must refuse it
// before any decoding).
std::string png_header(uint32_t w, uint32_t h) {
  std::string ihdr;
  for (const uint32_t v : {w, h})
    for (int shift = 24; shift >= 0; shift -= 8) ihdr += static_cast<char>((v >> shift) & 0xff);
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);
  return std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", ihdr) + png_chunk("IEND", "");
}

TEST(ImageApi, A1111Img2ImgFields) {
  using nlohmann::json;
  const std::string png = base64_encode(png_header(64, 32));
  const A1111Img2ImgRequest r = parse_a1111_img2img(
      {{"init_images", {"data:image/png;base64," + png}}, {"prompt", "p"}, {"seed", 3}});
  const Settings s = resolve_settings({&r.common.layer});
  EXPECT_EQ(s.strength, 0.75);  // A1111's denoising_strength default
  EXPECT_EQ(s.mask_blur, 4);
  EXPECT_FALSE(s.paste_back);
  EXPECT_TRUE(r.mask.empty());
  EXPECT_EQ(r.init_image, png_header(64, 32));
  EXPECT_TRUE(r.common.parameters.at("init_images").is_null());  // include_init_images false
  EXPECT_EQ(r.common.parameters.at("resize_mode"), 0);
  const A1111Img2ImgRequest m = parse_a1111_img2img({{"init_images", {png}},
                                                     {"mask", png},
                                                     {"mask_blur", 8},
                                                     {"denoising_strength", 0.5},
                                                     {"inpainting_mask_invert", 1},
                                                     {"inpaint_full_res", false},
                                                     {"include_init_images", true}});
  const Settings ms = resolve_settings({&m.common.layer});
  EXPECT_EQ(ms.strength, 0.5);
  EXPECT_EQ(ms.mask_blur, 8);
  EXPECT_TRUE(ms.paste_back);
  EXPECT_TRUE(m.invert_mask);
  EXPECT_EQ(m.common.parameters.at("init_images"), json::array({png}));
  for (const auto& [field, body] : std::vector<std::pair<std::string, json>>{
           {"init_images", json::object()},
           {"init_images", {{"init_images", json::array()}}},
           {"init_images", {{"init_images", {png, png}}}},
           {"init_images", {{"init_images", {"not base64!"}}}},
           {"init_images", {{"init_images", {5}}}},
           {"init_images", {{"init_images", {base64_encode("\xff\xd8\xff\xe0 a JPEG")}}}},
           {"init_images", {{"init_images", {base64_encode(png_header(100000, 100000))}}}},
           {"init_images", {{"init_images", {base64_encode(png_header(4097, 4096))}}}},
           {"resize_mode", {{"init_images", {png}}, {"resize_mode", 1}}},
           {"inpainting_fill", {{"init_images", {png}}, {"inpainting_fill", 2}}},
           {"inpaint_full_res",
            {{"init_images", {png}}, {"mask", png}, {"inpaint_full_res", true}}},
           {"mask", {{"init_images", {png}}, {"mask", "@@"}}},
           {"denoising_strength", {{"init_images", {png}}, {"denoising_strength", 2}}},
           {"mask_blur_x", {{"init_images", {png}}, {"mask_blur_x", 2}, {"mask_blur_y", 3}}},
           {"override_settings.sd_model_checkpoint",
            {{"init_images", {png}}, {"override_settings", {{"sd_model_checkpoint", "../m"}}}}},
           {"override_settings.no_such_option",
            {{"init_images", {png}}, {"override_settings", {{"no_such_option", 1}}}}}}) {
    try {
      parse_a1111_img2img(body);
      ADD_FAILURE() << body.dump();
    } catch (const ApiFieldError& e) {
      EXPECT_EQ(e.field(), field) << e.what();
    }
  }
}

TEST(ImageApi, A1111OverrideSettings) {
  using nlohmann::json;
  const A1111Request r = parse_a1111_txt2img({{"override_settings",
                                               {{"CLIP_stop_at_last_layers", 2},
                                                {"sd_model_checkpoint", "other [0123456789]"},
                                                {"eta_noise_seed_delta", 0},
                                                {"filter_nsfw", true},
                                                {"samples_format", "png"}}},
                                              {"override_settings_restore_afterwards", false}});
  EXPECT_EQ(resolve_settings({&r.layer}).clip_skip, 2);
  EXPECT_EQ(*r.checkpoint, "other [0123456789]");
  EXPECT_FALSE(r.restore_afterwards);
  EXPECT_TRUE(parse_a1111_txt2img(json::object()).restore_afterwards);
  for (const auto& [key, value] :
       std::vector<std::pair<std::string, json>>{{"eta_noise_seed_delta", 31337},
                                                 {"samples_format", "jpg"},
                                                 {"filter_nsfw", "yes"},
                                                 {"sd_model_checkpoint", "/models/x.safetensors"},
                                                 {"sd_model_checkpoint", 5},
                                                 {"outdir_samples", "/tmp"}}) {
    try {
      parse_a1111_txt2img({{"override_settings", {{key, value}}}});
      ADD_FAILURE() << key;
    } catch (const ApiFieldError& e) {
      EXPECT_EQ(e.field(), "override_settings." + key) << e.what();
    }
  }
}

#ifdef SDGEN_WITH_SERVE

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// A port nothing listens on now (the kernel's choice for port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string quote(const std::string& s) { return "'" + s + "'"; }

// Waits for `pid` at most `seconds`; its wait status, or -1 (then killed).
int wait_for(pid_t pid, double seconds) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (Clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return -1;
}

// The settings both the server's requests and the command line use.
const std::string kPrompt = "a red cube on a table";
const std::string kModelFlags = " --threads 2 --steps 2";

struct ServerProcess {
  pid_t pid = -1;
  int port = 0;
  std::string stderr_path;
  ~ServerProcess() {
    if (pid > 0 && ::kill(pid, 0) == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

// `extra`: more flags; `env`: "NAME=value " words before the command.
void start_server(ServerProcess& server, const std::string& dir, const std::string& extra = "",
                  const std::string& env = "") {
  server.port = free_port();
  server.stderr_path = dir + "/serve.log";
  const std::string command = env + "exec " + quote(test::binary_dir() + "/sdgen") +
                              " serve --model " + quote(test::tiny_model_dir()) + kModelFlags +
                              " --port " + std::to_string(server.port) + extra + " 2>" +
                              quote(server.stderr_path);
  server.pid = ::fork();
  if (server.pid == 0) {
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
}

json post_json(httplib::Client& client, const std::string& path, const json& body, int* status) {
  auto res = client.Post(path.c_str(), body.dump(), "application/json");
  if (!res) {
    *status = -1;
    return nullptr;
  }
  *status = res->status;
  return json::parse(res->body, nullptr, false);
}

TEST(Serve, EndToEnd) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = test::temp_dir("serve");
  ServerProcess server;
  start_server(server, dir);
  ASSERT_GT(server.pid, 0);
  httplib::Client client("127.0.0.1", server.port);
  client.set_read_timeout(120, 0);
  client.set_connection_timeout(1, 0);

  // /health: 503 while the model loads (when the poll is early enough to see
  // it), then 200; never anything else.
  std::vector<int> statuses;
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < deadline) {
    auto res = client.Get("/health");
    if (res) {
      if (statuses.empty() || statuses.back() != res->status) statuses.push_back(res->status);
      if (res->status == 200) {
        EXPECT_EQ(json::parse(res->body), json({{"status", "ok"}}));
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_FALSE(statuses.empty()) << read_text(server.stderr_path);
  EXPECT_EQ(statuses.back(), 200) << read_text(server.stderr_path);
  EXPECT_LE(statuses.size(), 2u);
  if (statuses.size() == 2) EXPECT_EQ(statuses.front(), 503);
  std::cout << "[serve] /health answered " << (statuses.size() == 2 ? "503 then 200" : "200")
            << std::endl;

  // The lists.
  auto samplers = client.Get("/sdapi/v1/samplers");
  ASSERT_TRUE(samplers && samplers->status == 200);
  EXPECT_NE(samplers->body.find("\"Euler a\""), std::string::npos);
  auto models = client.Get("/sdapi/v1/sd-models");
  ASSERT_TRUE(models && models->status == 200);
  EXPECT_EQ(json::parse(models->body).at(0).at("model_name"), "sd1-tiny");
  for (const char* path : {"/sdapi/v1/schedulers", "/sdapi/v1/options", "/v1/models"}) {
    auto res = client.Get(path);
    ASSERT_TRUE(res) << path;
    EXPECT_EQ(res->status, 200) << path;
  }

  // A1111 txt2img equals the command line's image.
  const json body = {{"prompt", kPrompt}, {"steps", 2},
                     {"width", 64},       {"height", 64},
                     {"seed", 1234},      {"sampler_name", "Euler a"},
                     {"cfg_scale", 7},    {"negative_prompt", "blurry"}};
  int status = 0;
  const json out = post_json(client, "/sdapi/v1/txt2img", body, &status);
  ASSERT_EQ(status, 200) << out.dump() << read_text(server.stderr_path);
  ASSERT_EQ(out.at("images").size(), 1u);
  EXPECT_EQ(out.at("parameters").at("seed"), 1234);
  EXPECT_EQ(out.at("parameters").at("n_iter"), 1);
  const std::string png = base64_decode(out["images"][0].get<std::string>());
  const DecodedPng api = decode_png(png, "api");
  const json info = json::parse(out.at("info").get<std::string>());
  EXPECT_EQ(info.at("all_seeds"), json::array({1234}));

  const std::string cli_png = dir + "/cli.png";
  std::string log;
  ASSERT_EQ(test::run(quote(test::binary_dir() + "/sdgen") + " -q --model " +
                          quote(test::tiny_model_dir()) + kModelFlags + " -p " + quote(kPrompt) +
                          " -n blurry -W 64 -H 64 --seed 1234 --sampler 'Euler a' "
                          "--cfg-scale 7 -o " +
                          quote(cli_png),
                      &log),
            0)
      << log;
  const std::string cli_bytes = read_text(cli_png);
  const DecodedPng cli = decode_png(cli_bytes, cli_png);
  EXPECT_EQ(api.width, 64);
  EXPECT_EQ(api.height, 64);
  EXPECT_EQ(api.pixels, cli.pixels);
  ASSERT_EQ(api.text.size(), 1u);
  ASSERT_EQ(cli.text.size(), 1u);
  EXPECT_EQ(api.text[0], cli.text[0]);
  EXPECT_EQ(info.at("infotexts").at(0), cli.text[0].second);
  EXPECT_EQ(png, cli_bytes);

  // png-info gives the parameters back.
  const json png_info =
      post_json(client, "/sdapi/v1/png-info", {{"image", out["images"][0]}}, &status);
  ASSERT_EQ(status, 200) << png_info.dump();
  EXPECT_EQ(png_info.at("info"), cli.text[0].second);
  EXPECT_EQ(png_info.at("parameters").at("Prompt"), kPrompt);
  EXPECT_EQ(png_info.at("parameters").at("Seed"), "1234");
  post_json(client, "/sdapi/v1/png-info", {{"image", "bm90IGEgUE5H"}}, &status);
  EXPECT_EQ(status, 422);

  // batch_size and n_iter: seeds per batch, as the command line numbers them.
  const json two = post_json(client, "/sdapi/v1/txt2img",
                             {{"prompt", kPrompt},
                              {"steps", 1},
                              {"width", 64},
                              {"height", 64},
                              {"seed", 7},
                              {"n_iter", 2}},
                             &status);
  ASSERT_EQ(status, 200) << two.dump();
  EXPECT_EQ(two.at("images").size(), 2u);
  EXPECT_EQ(json::parse(two.at("info").get<std::string>()).at("all_seeds"), json::array({7, 8}));

  // Bad A1111 values: 422 naming the field.
  for (const auto& [field, value] : std::vector<std::pair<std::string, json>>{
           {"sampler_name", "No Such Sampler"}, {"steps", "many"}, {"width", 65}}) {
    json bad = {{"prompt", kPrompt}, {"steps", 1}, {"width", 64}, {"height", 64}};
    bad[field] = value;
    const json err = post_json(client, "/sdapi/v1/txt2img", bad, &status);
    EXPECT_EQ(status, 422) << field;
    EXPECT_EQ(err.at("detail").at(0).at("loc"), json::array({"body", field})) << err.dump();
  }

  // OpenAI: n images of the requested size.
  const json oa = post_json(client, "/v1/images/generations",
                            {{"prompt", kPrompt},
                             {"n", 2},
                             {"size", "64x64"},
                             {"response_format", "b64_json"},
                             {"model", "dall-e-2"},
                             {"user", "test"}},
                            &status);
  ASSERT_EQ(status, 200) << oa.dump();
  EXPECT_TRUE(oa.at("created").is_number_integer());
  ASSERT_EQ(oa.at("data").size(), 2u);
  for (const auto& item : oa["data"]) {
    const DecodedPng image = decode_png(base64_decode(item.at("b64_json")), "openai");
    EXPECT_EQ(image.width, 64);
    EXPECT_EQ(image.height, 64);
  }
  // OpenAI errors: 400 with its error object.
  for (const auto& [field, value] : std::vector<std::pair<std::string, json>>{
           {"size", "64x65"}, {"size", "big"}, {"n", 11}, {"response_format", "url"}}) {
    json bad = {{"prompt", kPrompt}, {"size", "64x64"}};
    bad[field] = value;
    const json err = post_json(client, "/v1/images/generations", bad, &status);
    EXPECT_EQ(status, 400) << field << " " << value;
    EXPECT_EQ(err.at("error").at("type"), "invalid_request_error") << err.dump();
    EXPECT_EQ(err.at("error").at("param"), field) << err.dump();
    EXPECT_FALSE(err.at("error").at("message").get<std::string>().empty());
  }

  // SIGTERM while an image is being made: it is finished and answered, then exit 0.
  int slow_status = 0;
  std::thread slow([&] {
    httplib::Client c("127.0.0.1", server.port);
    c.set_read_timeout(120, 0);
    post_json(c, "/sdapi/v1/txt2img",
              {{"prompt", kPrompt}, {"steps", 40}, {"width", 64}, {"height", 64}, {"seed", 3}},
              &slow_status);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(server.pid, SIGTERM);
  slow.join();
  const int exit_status = wait_for(server.pid, 60);
  server.pid = -1;
  const std::string err_log = read_text(server.stderr_path);
  EXPECT_EQ(slow_status, 200) << err_log;
  ASSERT_TRUE(WIFEXITED(exit_status)) << exit_status << "\n" << err_log;
  EXPECT_EQ(WEXITSTATUS(exit_status), 0) << err_log;
  // One JSON line per request.
  EXPECT_NE(err_log.find("{\"method\":\"POST\",\"path\":\"/sdapi/v1/txt2img\",\"seconds\":"),
            std::string::npos)
      << err_log;
}

// Waits until /health answers 200 (the model is loaded); false after 60 s.
bool wait_ready(int port) {
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(1, 0);
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < deadline) {
    auto res = client.Get("/health");
    if (res && res->status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// The value of the Prometheus sample `series` (name with its labels, as
// written) in `text`; -1 when absent.
double metric_value(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line))
    if (line.compare(0, series.size() + 1, series + " ") == 0)
      return std::stod(line.substr(series.size() + 1));
  return -1;
}

// Sends raw bytes on a new connection and returns what comes back until the
// server closes it (or 10 s pass).
std::string raw_exchange(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return "";
  }
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  std::string out;
  char buffer[4096];
  ssize_t n;
  while ((n = ::recv(fd, buffer, sizeof buffer, 0)) > 0) out.append(buffer, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

std::string sdgen_cli() {
  return quote(test::binary_dir() + "/sdgen") + " -q --model " + quote(test::tiny_model_dir()) +
         kModelFlags;
}

// img2img and inpainting equal the command line's images; bad images and
// fields get 422 and the server keeps serving; LoRA paths are refused;
// progress, interrupt and skip; /metrics counts it all; a queued request
// whose client hung up is dropped.
TEST(Serve, Img2ImgProgressMetrics) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = test::temp_dir("serve_img2img");
  ServerProcess server;
  start_server(server, dir);
  ASSERT_TRUE(wait_ready(server.port)) << read_text(server.stderr_path);
  httplib::Client client("127.0.0.1", server.port);
  client.set_read_timeout(120, 0);

  // The init image and a mask (the right half repainted).
  const std::string init_png = dir + "/init.png", mask_png = dir + "/mask.png";
  std::string log;
  ASSERT_EQ(
      test::run(sdgen_cli() + " -p 'a blue ball' -W 64 -H 64 --seed 5 -o " + quote(init_png), &log),
      0)
      << log;
  auto mask = torch::zeros({64, 64, 1}, torch::kUInt8);
  mask.narrow(1, 32, 32).fill_(255);
  write_png(mask_png, mask);
  const std::string init_b64 = base64_encode(read_text(init_png));
  const std::string mask_b64 = base64_encode(read_text(mask_png));
  int status = 0;
  int images_made = 0;

  for (const bool inpaint : {false, true}) {
    json body = {{"prompt", kPrompt},
                 {"steps", 2},
                 {"width", 64},
                 {"height", 64},
                 {"seed", 99},
                 {"sampler_name", "Euler a"},
                 {"cfg_scale", 7},
                 {"init_images", {"data:image/png;base64," + init_b64}},
                 {"denoising_strength", 0.6}};
    std::string flags = " --init-image " + quote(init_png) + " --strength 0.6";
    if (inpaint) {
      body["mask"] = mask_b64;
      body["inpaint_full_res"] = false;
      flags += " --mask " + quote(mask_png) + " --paste-back --mask-blur 4";
    }
    const json out = post_json(client, "/sdapi/v1/img2img", body, &status);
    ASSERT_EQ(status, 200) << out.dump() << read_text(server.stderr_path);
    ASSERT_EQ(out.at("images").size(), 1u);
    ++images_made;
    const json info = json::parse(out.at("info").get<std::string>());
    EXPECT_EQ(info.at("denoising_strength"), 0.6);
    EXPECT_EQ(info.at("is_using_inpainting_conditioning"), false);  // a 4-channel UNet
    EXPECT_TRUE(out.at("parameters").at("init_images").is_null());
    const std::string cli_png = dir + (inpaint ? "/cli_inpaint.png" : "/cli_img2img.png");
    ASSERT_EQ(test::run(sdgen_cli() + " -p " + quote(kPrompt) +
                            " -W 64 -H 64 --seed 99 --sampler 'Euler a' --cfg-scale 7" + flags +
                            " -o " + quote(cli_png),
                        &log),
              0)
        << log;
    EXPECT_EQ(base64_decode(out["images"][0].get<std::string>()), read_text(cli_png))
        << (inpaint ? "inpainting" : "img2img") << "\n"
        << info.at("infotexts").at(0);
  }

  // Bad bodies: 422 naming the field, and the server keeps serving.
  const std::string bomb =
      base64_encode(std::string("\x89PNG\r\n\x1a\n", 8) +
                    png_chunk("IHDR", std::string("\x00\x01\x86\xa0\x00\x01"
                                                  "\x86\xa0\x08\x02\x00\x00\x00",
                                                  13)) +
                    png_chunk("IEND", ""));
  for (const auto& [field, bad] : std::vector<std::pair<std::string, json>>{
           {"init_images", {{"init_images", {bomb}}}},
           {"init_images", {{"init_images", {"%%%not base64"}}}},
           {"init_images", {{"init_images", "a string, not a list"}}},
           {"init_images", {{"init_images", {base64_encode("not a PNG at all")}}}},
           {"steps", {{"init_images", {init_b64}}, {"steps", "two"}}},
           {"resize_mode", {{"init_images", {init_b64}}, {"resize_mode", 2}}},
           {"inpaint_full_res",
            {{"init_images", {init_b64}}, {"mask", mask_b64}, {"inpaint_full_res", true}}},
           {"override_settings.not_an_option",
            {{"init_images", {init_b64}}, {"override_settings", {{"not_an_option", true}}}}}}) {
    const json err = post_json(client, "/sdapi/v1/img2img", bad, &status);
    EXPECT_EQ(status, 422) << field << " " << err.dump();
    EXPECT_EQ(err.at("detail").at(0).at("loc"), json::array({"body", field})) << err.dump();
  }
  // A truncated PNG whose header is fine: its decoding fails, 422.
  const std::string truncated = base64_encode(read_text(init_png).substr(0, 60));
  post_json(client, "/sdapi/v1/img2img", {{"init_images", {truncated}}, {"steps", 1}}, &status);
  EXPECT_EQ(status, 422);
  for (const std::string raw : {"{not json", "[1,2]", "\"text\""}) {
    auto res = client.Post("/sdapi/v1/txt2img", raw, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 422) << raw;
  }
  // LoRAs by name only: paths are refused.
  for (const std::string tag : {"<lora:../secret:1>", "<lora:/etc/passwd:1>", "<lora:a/b:0.5>"}) {
    const json err = post_json(
        client, "/sdapi/v1/txt2img",
        {{"prompt", tag + " a cube"}, {"steps", 1}, {"width", 64}, {"height", 64}}, &status);
    EXPECT_EQ(status, 422) << tag << " " << err.dump();
    EXPECT_NE(err.dump().find("by name only"), std::string::npos) << err.dump();
  }
  // override_settings: clip skip taken, harmless keys ignored.
  const json clip = post_json(
      client, "/sdapi/v1/txt2img",
      {{"prompt", kPrompt},
       {"steps", 1},
       {"width", 64},
       {"height", 64},
       {"seed", 1},
       {"override_settings",
        {{"CLIP_stop_at_last_layers", 2}, {"eta_noise_seed_delta", 0}, {"samples_format", "png"}}}},
      &status);
  ASSERT_EQ(status, 200) << clip.dump();
  ++images_made;
  EXPECT_EQ(json::parse(clip.at("info").get<std::string>()).at("clip_skip"), 2);
  EXPECT_NE(json::parse(clip.at("info").get<std::string>())
                .at("infotexts")
                .at(0)
                .get<std::string>()
                .find("Clip skip: 2"),
            std::string::npos);

  // Progress while a long request runs, then interrupt: it answers 200 with
  // the images finished before (none here), and the next request is served.
  const auto progress = [&] { return json::parse(client.Get("/sdapi/v1/progress")->body); };
  EXPECT_EQ(progress().at("progress"), 0);
  EXPECT_EQ(progress().at("state").at("job_count"), 0);
  const json slow_body = {{"prompt", kPrompt}, {"steps", 1000}, {"width", 64},
                          {"height", 64},      {"seed", 11},    {"n_iter", 2}};
  json slow_out;
  int slow_status = 0;
  std::thread slow([&] {
    httplib::Client c("127.0.0.1", server.port);
    c.set_read_timeout(300, 0);
    slow_out = post_json(c, "/sdapi/v1/txt2img", slow_body, &slow_status);
  });
  json p;
  for (int i = 0; i < 3000; ++i) {
    p = progress();
    // This request's state (job_count is 0 between requests).
    if (p.at("state").at("job_count") == 2 && p.at("state").at("sampling_step").get<int>() >= 2)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GT(p.at("progress").get<double>(), 0.0) << p.dump();
  EXPECT_LT(p.at("progress").get<double>(), 0.6) << p.dump();
  EXPECT_EQ(p.at("state").at("job_count"), 2) << p.dump();
  EXPECT_EQ(p.at("state").at("sampling_steps"), 1000) << p.dump();
  EXPECT_TRUE(p.at("current_image").is_null());
  EXPECT_GE(p.at("eta_relative").get<double>(), 0.0);

  // Meanwhile a client queues and hangs up before its turn: dropped, no work.
  std::thread quitter([&] {
    httplib::Client c("127.0.0.1", server.port);
    c.set_read_timeout(0, 300000);
    c.Post("/sdapi/v1/txt2img", json({{"prompt", kPrompt}, {"steps", 1}}).dump(),
           "application/json");
  });
  quitter.join();
  post_json(client, "/sdapi/v1/interrupt", json::object(), &status);
  EXPECT_EQ(status, 200);
  slow.join();
  EXPECT_EQ(slow_status, 200) << slow_out.dump();
  EXPECT_EQ(slow_out.at("images").size(), 0u) << slow_out.dump();
  EXPECT_TRUE(progress().at("state").at("interrupted").get<bool>());

  // Skip: the first batch is dropped, the second made.
  std::thread skipped([&] {
    httplib::Client c("127.0.0.1", server.port);
    c.set_read_timeout(300, 0);
    slow_out = post_json(c, "/sdapi/v1/txt2img",
                         {{"prompt", kPrompt},
                          {"steps", 1000},
                          {"width", 64},
                          {"height", 64},
                          {"seed", 11},
                          {"n_iter", 2}},
                         &slow_status);
  });
  for (int i = 0; i < 3000; ++i) {
    p = progress();
    // This request's state (job_count is 0 between requests).
    if (p.at("state").at("job_count") == 2 && p.at("state").at("sampling_step").get<int>() >= 2)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  post_json(client, "/sdapi/v1/skip", json::object(), &status);
  for (int i = 0; i < 3000; ++i) {
    p = progress();
    if (p.at("state").at("job_no") == 1 && p.at("state").at("sampling_step").get<int>() >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  post_json(client, "/sdapi/v1/interrupt", json::object(), &status);
  skipped.join();
  EXPECT_EQ(slow_status, 200);
  EXPECT_TRUE(p.at("state").at("skipped").get<bool>()) << p.dump();
  // A POST without Content-Length has no body (`curl -X POST .../interrupt`):
  // answered at once, not after the server's 5 s read timeout.
  const auto t_raw = std::chrono::steady_clock::now();
  const std::string bodiless = raw_exchange(
      server.port, "POST /sdapi/v1/interrupt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(bodiless.rfind("HTTP/1.1 200", 0), 0u) << bodiless;
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_raw).count(), 2.5);

  // /metrics: the text format, and the counts of what happened above.
  auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(metrics->get_header_value("Content-Type").rfind("text/plain; version=0.0.4", 0), 0u);
  const std::string text = metrics->body;
  std::istringstream lines(text);
  std::string line;
  const std::regex sample(
      R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_]+="[^"]*"(,[a-zA-Z_]+="[^"]*")*\})? [-+0-9.eE]+(Inf|NaN)?$)");
  const std::regex comment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$)");
  while (std::getline(lines, line))
    EXPECT_TRUE(std::regex_match(line, line[0] == '#' ? comment : sample)) << line;
  EXPECT_EQ(metric_value(text, "sdgen_images_generated_total"), images_made);
  EXPECT_EQ(
      metric_value(text, "sdgen_http_requests_total{route=\"/sdapi/v1/img2img\",status=\"200\"}"),
      2);
  EXPECT_GE(
      metric_value(text, "sdgen_http_requests_total{route=\"/sdapi/v1/img2img\",status=\"422\"}"),
      9);
  EXPECT_EQ(metric_value(text, "sdgen_requests_dropped_total"), 1) << read_text(server.stderr_path);
  EXPECT_EQ(metric_value(text, "sdgen_queue_depth"), 0);
  EXPECT_GT(metric_value(text, "sdgen_unet_steps_per_second"), 0);
  EXPECT_EQ(metric_value(text, "sdgen_image_seconds_count"), images_made);
  EXPECT_GT(metric_value(text, "process_resident_memory_bytes"), 1e6);
  EXPECT_NE(read_text(server.stderr_path).find("\"status\":499"), std::string::npos);
}

// --api-key (from SDGEN_API_KEY) and --api-auth: 401 without credentials
// (a WWW-Authenticate header, never the key in the answer), /health open.
TEST(Serve, ApiKeyAndBasicAuth) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = test::temp_dir("serve_auth");
  ServerProcess server;
  const std::string key = "s3cret-key-42";
  start_server(server, dir, " --api-auth alice:pw1,bob:pw2", "SDGEN_API_KEY=" + key + " ");
  ASSERT_TRUE(wait_ready(server.port)) << read_text(server.stderr_path);
  httplib::Client client("127.0.0.1", server.port);
  auto res = client.Get("/sdapi/v1/samplers");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_TRUE(res->has_header("WWW-Authenticate"));
  EXPECT_EQ(res->body.find(key), std::string::npos);
  const std::vector<std::pair<std::string, int>> cases = {
      {"Bearer " + key, 200},
      {"bearer " + key, 200},
      {"Bearer " + key + "x", 401},
      {"Bearer ", 401},
      {"Basic " + base64_encode("alice:pw1"), 200},
      {"Basic " + base64_encode("bob:pw2"), 200},
      {"Basic " + base64_encode("bob:pw1"), 401},
      {"Basic !!!", 401},
      {"Token " + key, 401}};
  for (const auto& [header, expected] : cases) {
    for (const char* path : {"/sdapi/v1/samplers", "/metrics", "/v1/models"}) {
      auto r = client.Get(path, {{"Authorization", header}});
      ASSERT_TRUE(r);
      EXPECT_EQ(r->status, expected) << header << " " << path;
      if (r->status == 401) EXPECT_EQ(r->body.find(key), std::string::npos);
    }
  }
  auto post = client.Post("/sdapi/v1/txt2img", "{}", "application/json");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 401);
  auto health = client.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(read_text(server.stderr_path).find(key), std::string::npos);
}

// --models-dir: sd-models lists every entry; override_settings and OpenAI's
// model switch for one request, restore_afterwards false and POST options
// for good; names that are paths or unknown are refused. --max-body-mb: 413
// for a declared length and for a chunked body, before either is read whole.
TEST(Serve, ModelsDirAndBodyLimit) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = test::temp_dir("serve_models");
  const std::string models = dir + "/models";
  std::string log;
  ASSERT_EQ(test::run("mkdir -p " + quote(models) + " && " + test::binary_dir() +
                          "/sdgen-mkmodel tiny --out " + quote(models + "/other") + " --seed 7",
                      &log),
            0)
      << log;
  ServerProcess server;
  start_server(server, dir, " --models-dir " + quote(models) + " --max-body-mb 1");
  ASSERT_TRUE(wait_ready(server.port)) << read_text(server.stderr_path);
  httplib::Client client("127.0.0.1", server.port);
  client.set_read_timeout(120, 0);
  int status = 0;

  const json list = json::parse(client.Get("/sdapi/v1/sd-models")->body);
  ASSERT_EQ(list.size(), 2u) << list.dump();
  EXPECT_EQ(list[0].at("model_name"), "sd1-tiny");
  EXPECT_EQ(list[1].at("model_name"), "other");
  EXPECT_EQ(list[1].at("filename"), "other");
  EXPECT_EQ(json::parse(client.Get("/v1/models")->body).at("data").size(), 2u);

  const auto model_of = [&](const json& body, bool expect_ok = true) {
    json b = {{"prompt", kPrompt}, {"steps", 1}, {"width", 64}, {"height", 64}, {"seed", 2}};
    b.update(body);
    const json out = post_json(client, "/sdapi/v1/txt2img", b, &status);
    if (!expect_ok) return out.dump();
    EXPECT_EQ(status, 200) << out.dump();
    return json::parse(out.at("info").get<std::string>()).at("sd_model_name").get<std::string>();
  };
  EXPECT_EQ(model_of(json::object()), "sd1-tiny");
  EXPECT_EQ(model_of({{"override_settings", {{"sd_model_checkpoint", "other"}}}}), "other");
  EXPECT_EQ(model_of(json::object()), "sd1-tiny");  // restored afterwards
  EXPECT_EQ(model_of({{"override_settings", {{"sd_model_checkpoint", "other"}}},
                      {"override_settings_restore_afterwards", false}}),
            "other");
  EXPECT_EQ(model_of(json::object()), "other");  // kept
  EXPECT_EQ(json::parse(client.Get("/sdapi/v1/options")->body)
                .at("sd_model_checkpoint")
                .get<std::string>()
                .rfind("other [", 0),
            0u);
  for (const std::string bad : {"../other", "/etc", "nope"}) {
    model_of({{"override_settings", {{"sd_model_checkpoint", bad}}}}, false);
    EXPECT_EQ(status, 422) << bad;
  }
  // POST options: back to the first model by its title, and clip skip 2.
  post_json(client, "/sdapi/v1/options",
            {{"sd_model_checkpoint", list[0].at("title")}, {"CLIP_stop_at_last_layers", 2}},
            &status);
  EXPECT_EQ(status, 200);
  const json options = json::parse(client.Get("/sdapi/v1/options")->body);
  EXPECT_EQ(options.at("CLIP_stop_at_last_layers"), 2);
  EXPECT_EQ(options.at("sd_model_checkpoint"), list[0].at("title"));
  EXPECT_EQ(model_of(json::object()), "sd1-tiny");
  post_json(client, "/sdapi/v1/options", {{"sd_model_checkpoint", "../x"}}, &status);
  EXPECT_EQ(status, 422);
  post_json(client, "/sdapi/v1/options", {{"outdir_samples", "/tmp"}}, &status);
  EXPECT_EQ(status, 422);

  // OpenAI's model: a models-dir entry, OpenAI's names, else its 404.
  const json oa = post_json(client, "/v1/images/generations",
                            {{"prompt", kPrompt}, {"size", "64x64"}, {"model", "other"}}, &status);
  EXPECT_EQ(status, 200) << oa.dump();
  const json missing =
      post_json(client, "/v1/images/generations",
                {{"prompt", kPrompt}, {"size", "64x64"}, {"model", "nope"}}, &status);
  EXPECT_EQ(status, 404);
  EXPECT_EQ(missing.at("error").at("code"), "model_not_found") << missing.dump();

  // 413: a declared length over 1 MiB, answered before any of the body is sent.
  const std::string declared = raw_exchange(
      server.port,
      "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Content-Length: 2000000\r\n\r\n");
  EXPECT_EQ(declared.rfind("HTTP/1.1 413", 0), 0u) << declared;
  // 413: a chunked body, refused once it passes 1 MiB.
  std::string chunked =
      "POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\n\r\n";
  // 1 MiB, then one byte more (and nothing after it, so that the server has
  // read all that was sent when it answers).
  for (int i = 0; i < 16; ++i) chunked += "10000\r\n" + std::string(0x10000, ' ') + "\r\n";
  chunked += "1\r\n ";
  const std::string refused = raw_exchange(server.port, chunked);
  EXPECT_EQ(refused.rfind("HTTP/1.1 413", 0), 0u) << refused.substr(0, 200);
  // A chunked body under the limit is read.
  const std::string small_body = json({{"image", "bm90IGEgUE5H"}}).dump();
  char size_hex[16];
  std::snprintf(size_hex, sizeof size_hex, "%zx", small_body.size());
  const std::string small =
      raw_exchange(server.port,
                   "POST /sdapi/v1/png-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                   "Transfer-Encoding: chunked\r\n\r\n" +
                       std::string(size_hex) + "\r\n" + small_body + "\r\n0\r\n\r\n");
  EXPECT_EQ(small.rfind("HTTP/1.1 422", 0), 0u) << small;  // read, and not a PNG
  // The server still serves.
  EXPECT_EQ(model_of(json::object()), "sd1-tiny");
}

#else

TEST(Serve, EndToEnd) { GTEST_SKIP() << "sdgen was built without `serve` (no cpp-httplib)"; }

#endif

}  // namespace
}  // namespace sdgen
