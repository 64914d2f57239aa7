#pragma once

// The command line's settings and exit codes, shared by the src/cli/ files.

#include <stdexcept>
#include <string>

#include "sdgen/settings.h"

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

// What the command line gave: its checked values (the "command line" layer of
// the settings table) and the settings they resolve to over the defaults.
struct CommandLine {
  SettingLayer layer{"the command line"};
  Settings settings;
};

// Errors are printed as one line, whatever the library or libtorch put in them.
std::string one_line(std::string text);

int run_generation(const CommandLine& command_line);  // runner.cpp
int run_info(const Settings& options);                // info.cpp
int run_show_params(const Settings& options);

}  // namespace sdgen::cli
