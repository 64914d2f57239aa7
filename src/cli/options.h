#pragma once

// The command line's settings and exit codes, shared by the src/cli/ files.

#include <cstdint>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>

namespace sdgen::cli {

// Documented in README.md ("Exit codes").
enum ExitCode : int {
  kExitOk = 0,
  kExitGeneration = 1,     // an image could not be generated or written
  kExitUsage = 2,          // bad flags or values, unreadable input files, bad prompt-file lines
  kExitModel = 3,          // the model (or its tokenizer) could not be loaded
  kExitInterrupted = 130,  // SIGINT or SIGTERM (Ctrl-C); images already written stay
};

// An error with the exit code it stands for; main prints "sdgen: error: <what>".
class CliError : public std::runtime_error {
 public:
  CliError(int code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

struct Options {
  std::string model;
  std::string config_dir;
  std::string tokenizer;
  std::string prediction;
  std::string prompt;
  std::string negative_prompt;
  int steps = 50;
  double cfg_scale = 7.5;
  std::optional<uint64_t> seed;
  int width = 512;
  int height = 512;
  std::string sampler = "ddim";
  double eta = 0.0;
  double guidance_rescale = 0.0;
  std::string schedule;  // "", karras, normal
  std::string init_image;
  double strength = 0.75;
  int clip_skip = 1;
  int batch_size = 1;
  int batch_count = 1;
  std::string device = "auto";
  std::string dtype = "auto";
  int threads = 0;
  std::string output = "out.png";
  bool quiet = false;
  // Batch jobs.
  std::string prompt_file;
  bool skip_existing = false;
  std::string shard;
  bool fail_fast = false;
  // Metadata and information.
  std::string from_png;
  std::string show_params;
  bool info = false;
  bool json = false;
  std::string long_prompt = "chunks";
  // Performance switches of the library.
  bool no_cuda_graphs = false;
  std::string channels_last = "auto";
  bool vae_tiling = false;
  bool no_memory_check = false;  // skip the memory estimate before loading and generating
  // Long names ("steps", "width", ...) of the options given on the command line.
  std::set<std::string> given;

  bool was_given(const std::string& name) const { return given.count(name) > 0; }
};

// Errors are printed as one line, whatever the library or libtorch put in them.
std::string one_line(std::string text);

int run_generation(Options options);   // batch.cpp
int run_info(const Options& options);  // info.cpp
int run_show_params(const Options& options);

}  // namespace sdgen::cli
