// Ctrl-C: the handlers of sdgen/interrupt.h in a forked child (the second
// signal removes the temporary file and exits 130 at once), and the `sdgen`
// binary on a prompt file: SIGINT after the first image stops the run at the
// next step with exit code 130, the first image intact, no temporary file
// and no later image.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "sdgen/image_io.h"
#include "sdgen/interrupt.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdgen {
namespace {

using Clock = std::chrono::steady_clock;

// Waits for `pid` at most `seconds`; returns its wait status, or -1 (killed).
int wait_for(pid_t pid, double seconds) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (Clock::now() < deadline) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return -1;
}

TEST(InterruptHandlers, SecondSignalRemovesTheTempFileAndExits130) {
  const auto dir = test::temp_dir("signals");
  const std::string tmp = dir + "/.out.png.tmp123";
  std::ofstream(tmp) << "half a PNG";
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: only async-signal-safe exits from here on.
    install_interrupt_handlers(false);
    if (interrupted()) ::_exit(10);
    const PendingTempFile pending(tmp);
    ::raise(SIGINT);  // first: a flag only
    if (!interrupted() || interrupt_signal() != SIGINT) ::_exit(11);
    if (::access(tmp.c_str(), F_OK) != 0) ::_exit(12);
    ::raise(SIGTERM);  // second: unlink + _exit(130)
    ::_exit(13);
  }
  const int status = wait_for(pid, 30);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_FALSE(fs::exists(tmp));
}

TEST(InterruptHandlers, PendingTempFileIsCleared) {
  EXPECT_EQ(pending_temp_file(), nullptr);
  {
    const PendingTempFile a("/tmp/a.tmp");
    EXPECT_STREQ(pending_temp_file(), "/tmp/a.tmp");
  }
  EXPECT_EQ(pending_temp_file(), nullptr);
  const PendingTempFile b("/tmp/b.tmp");
  EXPECT_STREQ(pending_temp_file(), "/tmp/b.tmp");
}

struct Child {
  pid_t pid = -1;
  std::string stderr_path;
};

// Starts `sdgen args` with stdout and stderr to files in `dir`.
Child start_sdgen(const std::string& dir, const std::string& args) {
  Child c;
  c.stderr_path = dir + "/stderr.txt";
  const std::string command = "exec '" + test::binary_dir() + "/sdgen' " + args + " >'" + dir +
                              "/stdout.txt' 2>'" + c.stderr_path + "'";
  c.pid = ::fork();
  if (c.pid == 0) {
    ::execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return c;
}

bool wait_for_file(const std::string& path, double seconds) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline) {
    if (fs::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Four prompts, each a few seconds of sampling on the tiny model.
std::string slow_prompt_file_args(const std::string& dir) {
  const std::string prompts = dir + "/prompts.txt";
  std::ofstream(prompts) << "a red cat\na blue dog\na green bird\na yellow fish\n";
  fs::create_directories(dir + "/out");
  return "--model '" + test::tiny_model_dir() + "' --prompt-file '" + prompts +
         "' --steps 150 -W 128 -H 128 --seed 1 --threads 1 -o '" + dir + "/out/{index}.png'";
}

TEST(CLISignals, SigintAfterTheFirstImage) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("signals");
  const Child c = start_sdgen(dir, slow_prompt_file_args(dir));
  ASSERT_GT(c.pid, 0);
  ASSERT_TRUE(wait_for_file(dir + "/out/0.png", 300)) << read_text(c.stderr_path);
  const auto sent = Clock::now();
  ::kill(c.pid, SIGINT);
  const int status = wait_for(c.pid, 120);
  const double stop_s = std::chrono::duration<double>(Clock::now() - sent).count();
  const std::string err = read_text(c.stderr_path);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status << "\n" << err;
  EXPECT_EQ(WEXITSTATUS(status), 130) << err;
  EXPECT_NE(err.find("sdgen: interrupted (SIGINT): 1 image written; the image in progress was "
                     "abandoned"),
            std::string::npos)
      << err;
  std::cout << "[signals] stopped " << stop_s << " s after SIGINT" << std::endl;
  // The first image is intact; nothing else, no temporary file.
  EXPECT_EQ(read_png(dir + "/out/0.png").pixels.size(0), 128);
  EXPECT_EQ(files_in(dir + "/out"), std::vector<std::string>{"0.png"});
}

// --max-batch 2: SIGINT once the first image is there lets that batch's
// second image be written (a batch is written whole, never half) and stops
// the next batch.
TEST(CLISignals, SigintDuringAMixedPromptBatchRun) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("signals-batch");
  const Child c = start_sdgen(dir, slow_prompt_file_args(dir) + " --max-batch 2");
  ASSERT_GT(c.pid, 0);
  ASSERT_TRUE(wait_for_file(dir + "/out/0.png", 300)) << read_text(c.stderr_path);
  ::kill(c.pid, SIGINT);
  const int status = wait_for(c.pid, 120);
  const std::string err = read_text(c.stderr_path);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status << "\n" << err;
  EXPECT_EQ(WEXITSTATUS(status), 130) << err;
  EXPECT_NE(err.find("sdgen: interrupted (SIGINT): 2 images written"), std::string::npos) << err;
  for (const char* name : {"0.png", "1.png"})
    EXPECT_EQ(read_png(dir + "/out/" + name).pixels.size(0), 128) << name;
  EXPECT_EQ(files_in(dir + "/out"), (std::vector<std::string>{"0.png", "1.png"}));
}

TEST(CLISignals, SecondSigintExitsAtOnce) {
  SDGEN_REQUIRE_SHARED();
  const auto dir = test::temp_dir("signals");
  const Child c = start_sdgen(dir, slow_prompt_file_args(dir));
  ASSERT_GT(c.pid, 0);
  ASSERT_TRUE(wait_for_file(dir + "/out/0.png", 300)) << read_text(c.stderr_path);
  ::kill(c.pid, SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(c.pid, SIGINT);
  const int status = wait_for(c.pid, 60);
  const std::string err = read_text(c.stderr_path);
  ASSERT_TRUE(WIFEXITED(status)) << "status " << status << "\n" << err;
  EXPECT_EQ(WEXITSTATUS(status), 130) << err;
  EXPECT_NE(err.find("sdgen: interrupted"), std::string::npos) << err;
  EXPECT_EQ(read_png(dir + "/out/0.png").pixels.size(1), 128);
  EXPECT_EQ(files_in(dir + "/out"), std::vector<std::string>{"0.png"});
}

}  // namespace
}  // namespace sdgen
