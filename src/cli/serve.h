#pragma once

// `sdgen serve`: the model loaded once behind A1111's /sdapi/v1 and OpenAI's
// /v1/images web APIs (serve.cpp). Built when cpp-httplib is found
// (SDGEN_WITH_SERVE).

#include <string>

#include <CLI/CLI.hpp>

#include "options.h"

namespace sdgen::cli {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 7860;
  std::string on_signal = "finish";  // SIGINT/SIGTERM: finish or interrupt the current image
  int queue_size = 64;               // requests waiting for the model; more are answered 503
  int max_body_mb = 64;              // larger bodies are refused with 413 before they are read
  std::string models_dir;            // the models requests may switch to, by name
  std::string api_key;               // required as "Authorization: Bearer KEY" ("" = none)
  std::string api_auth;              // "user:pass[,user2:pass2]": HTTP Basic accepted too
};

// The flags of `sdgen serve` besides the settings table's (model, device, ...).
void add_serve_flags(CLI::App& app, ServeOptions& options);

// Serves until SIGINT or SIGTERM; returns the exit code (0 after a signal).
int run_serve(const CommandLine& command_line, const ServeOptions& options);

}  // namespace sdgen::cli
