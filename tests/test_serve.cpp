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
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "sdgen/base64.h"
#include "sdgen/error.h"
#include "sdgen/image_api.h"
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

void start_server(ServerProcess& server, const std::string& dir) {
  server.port = free_port();
  server.stderr_path = dir + "/serve.log";
  const std::string command = "exec " + quote(test::binary_dir() + "/sdgen") + " serve --model " +
                              quote(test::tiny_model_dir()) + kModelFlags + " --port " +
                              std::to_string(server.port) + " 2>" + quote(server.stderr_path);
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

#else

TEST(Serve, EndToEnd) { GTEST_SKIP() << "sdgen was built without `serve` (no cpp-httplib)"; }

#endif

}  // namespace
}  // namespace sdgen
