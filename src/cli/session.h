#pragma once

// The model loaded once, with everything an image needs besides its own
// settings: the pipeline, the LoRA library, the embeddings, and the names and
// hashes its PNG's A1111 parameters carry. The command line's Runner
// (runner.cpp) and `sdgen serve` (serve.cpp) generate through it, so an image
// and its parameters text are the same whichever made them.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "loras.h"
#include "resources.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/settings.h"

namespace sdgen::cli {

// One request of a run: its settings and what the pipeline gets.
struct Job {
  Settings settings;  // the layers resolved, with the request's size and seed
  GenerationRequest request;
  bool pattern_from_entry = false;
  std::vector<AppliedLora> loras;            // merged into the model for this job's images
  std::vector<std::string> embeddings_used;  // by the last generate() of the job
};

struct ModelSession {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  // The model folder's settings layer: its native size, SDXL's defaults.
  SettingLayer model_layer{"the model"};
  std::string model_path, model_hash10, model_name;
  std::string vae_hash10, vae_name;  // --vae (A1111's "VAE hash" and "VAE")
  double load_s = 0;
  std::unique_ptr<StableDiffusionModel> model;
  std::unique_ptr<Pipeline> pipeline;
  // Declared after model: destroyed first, it takes its LoRAs out of the model.
  std::unique_ptr<LoraLibrary> loras;
  std::map<std::string, std::string> embedding_hashes;  // name -> 12 hex digits
};

// --device and --dtype as libtorch's; throws CliError (kExitUsage).
void resolve_device(const Settings& run, torch::Device& device, torch::ScalarType& dtype);

// Loads run.model (the default model when empty) on session.device with
// session.dtype, then the pipeline, LoRA library and embeddings. `known`: the
// one request the run will make, checked for memory before the load (nullptr:
// the weights only). Throws CliError with the exit code.
void load_session(ModelSession& session, const Settings& run, const MemoryRequest* known);

// Checks job.request against the model and resolves the LoRAs job.settings
// ask for; throws Error (or c10::Error) saying what is wrong.
void prepare_job(ModelSession& session, Job& job);

// Memory for the job's size, batch, prompt length and LoRA copies, before any
// allocation: "" when it fits, else the one-line message (resources.h).
std::string job_memory_problem(ModelSession& session, const Job& job);

// Merges the job's LoRAs and generates job.request; records the embeddings used.
GenerationResult generate_job(ModelSession& session, Job& job, const StepCallback& on_step);

// Mixed-prompt batching (--max-batch): why job `b` cannot share a UNet batch
// with job `a`, or "" when it can (the pipeline's batch_mismatch, and the
// same LoRAs at the same weights, merged once for the batch).
std::string jobs_batch_mismatch(const ModelSession& session, const Job& a, const Job& b);

// job_memory_problem for `jobs` generated as one batch (their images together).
std::string jobs_memory_problem(ModelSession& session, const std::vector<const Job*>& jobs);

// Merges the jobs' LoRAs (the same for all) and generates them as one batch
// (Pipeline::generate_batch): result k is jobs[k]'s, as generate_job gives
// it; records each job's embeddings.
std::vector<GenerationResult> generate_jobs(ModelSession& session, const std::vector<Job*>& jobs,
                                            const StepCallback& on_step);

// The A1111 "parameters" text of image `pos` of the job's batch, as the PNG carries it.
std::string image_parameters(const ModelSession& session, const Job& job, int pos);

}  // namespace sdgen::cli
