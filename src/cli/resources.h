#pragma once

// Resource safety of generation runs (memory checks before allocating,
// out-of-memory errors, Ctrl-C), kept out of the runner's flow (runner.cpp).

#include <exception>
#include <string>

#include "options.h"
#include "sdgen/memory_estimate.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"

namespace sdgen::cli {

// Thrown from the sampling step callback once SIGINT/SIGTERM arrived: the
// image in progress is abandoned (sdgen/interrupt.h has the handlers).
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "interrupted"; }
};
void throw_if_interrupted();
// The one line printed when a run stops on a signal ("sdgen: interrupted ...").
std::string interrupted_line(int64_t images_written);

// The memory-relevant parts of a request (prompt_chunks: 77-token chunks).
MemoryRequest memory_request(const GenerationRequest& request, int prompt_chunks = 1);

// Before the model loads: "" when the model (weights only, when `request` is
// null: the prompt-file lines may ask for other sizes) and the request fit,
// else the one-line message. Problems reading the model's files are left to
// load_model to report.
std::string memory_problem_before_load(const LoadOptions& load, const MemoryRequest* request);
// Before generating `request` with the loaded model: "" or the message.
std::string memory_problem(const StableDiffusionModel& model, const MemoryRequest& request);

// The one-line text of an out-of-memory error while the model loaded.
std::string load_out_of_memory_text(const LoadOptions& load);

// The one-line text of an error that ended a generation: out-of-memory errors
// get the request, the estimate and suggestions (and the CUDA cache is
// released for the next request); others "generation failed: <what>".
std::string generation_error_text(const std::exception& error, const StableDiffusionModel& model,
                                  const MemoryRequest& request);

}  // namespace sdgen::cli
