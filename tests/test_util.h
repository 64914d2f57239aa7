#pragma once

// Helpers shared by the GoogleTest suites: where ../shared is, golden tensors,
// temporary folders and running the project's binaries.

#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/safetensors.h"

namespace sdgen::test {

std::string shared_dir();       // SDGEN_SHARED_DIR (CMake cache variable) or $SDGEN_SHARED_DIR
bool has_shared();              // golden file and tiny models present
std::string golden_path();      // <shared>/golden/sd1/golden.safetensors
std::string tiny_model_dir();   // <shared>/models/sd1-tiny
std::string tiny_model_file();  // <shared>/models/sd1-tiny.safetensors
std::string clip_vocab_dir();   // <shared>/data/clip
const SafeTensorsFile& golden_file();
// The tiny SDXL (<shared>/models/sdxl-tiny[.safetensors]) and its golden
// tensors (<shared>/golden/sdxl/golden.safetensors); has_sdxl() when all three exist.
std::string sdxl_model_dir();
std::string sdxl_model_file();
bool has_sdxl();
// A copy of golden/sdxl tensor `key`; fails the test if absent.
torch::Tensor sdxl_golden(const std::string& key);
// A copy of golden tensor `key` (CPU, stored dtype); fails the test if absent.
torch::Tensor golden(const std::string& key);
// The JSON string in the golden file's __metadata__["meta"].
std::string golden_meta();

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b);

// A fresh empty folder under the build tree, removed at process exit.
std::string temp_dir(const std::string& tag);
std::string binary_dir();  // the CMake build folder (where `sdgen` is)
std::string source_dir();

// Runs a shell command, capturing stdout+stderr; returns the exit code.
int run(const std::string& command, std::string* output = nullptr);

// The tiny model (tiny_model_dir()), loaded once per process.
StableDiffusionModel& tiny_model();
// A txt2img request from a golden pipe.*.meta tensor [steps, guidance, seed,
// height, width]; the prompt is the golden one, no negative prompt.
GenerationRequest request_from_meta(const torch::Tensor& meta, const std::string& sampler);
// The golden txt2img request for `sampler` (golden pipe.<sampler>.meta: steps,
// guidance, seed, height, width; LCM runs without a negative prompt).
GenerationRequest golden_request(const std::string& sampler);
// Runs golden_request(sampler) on tiny_model() and compares every step's
// latents (1e-4), the image (1e-4) and image_u8 (1 level) with the golden
// pipe.<sampler>.* tensors; prints a "[parity] ..." line.
void check_golden_pipeline(const std::string& sampler);

}  // namespace sdgen::test

// Skips the current test when the SDXL reference data is missing.
#define SDGEN_REQUIRE_SDXL()                                                                \
  do {                                                                                      \
    if (!::sdgen::test::has_sdxl())                                                         \
      GTEST_SKIP() << "SDXL reference data not found under " << ::sdgen::test::shared_dir() \
                   << " (models/sdxl-tiny, golden/sdxl); skipping";                         \
  } while (0)

// Skips the current test with a clear message when ../shared is missing.
#define SDGEN_REQUIRE_SHARED()                                                      \
  do {                                                                              \
    if (!::sdgen::test::has_shared())                                               \
      GTEST_SKIP() << "reference data not found at " << ::sdgen::test::shared_dir() \
                   << " (set -DSDGEN_SHARED_DIR=...); skipping";                    \
  } while (0)
