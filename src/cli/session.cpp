// The model loaded once (session.h): the load, the embeddings, the VAE's
// identity, and one job's generation and parameters text.

#include "session.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <iostream>

#include "default_model.h"
#include "formats/strings.h"
#include "sdgen/a1111.h"
#include "sdgen/device_info.h"
#include "sdgen/error.h"
#include "sdgen/runtime.h"
#include "sdgen/sha256.h"
#include "sdgen/torch_checkpoint.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

namespace {

std::string default_model_dir() {
  if (const char* env = std::getenv("SDGEN_DEFAULT_MODEL")) return env;
  return find_default_model();
}

torch::ScalarType torch_dtype(DtypeChoice choice, const torch::Device& device) {
  switch (choice) {
    case DtypeChoice::fp32:
    case DtypeChoice::fp32_lowmem:  // + LoadOptions::weights_as_stored (load_session)
      return torch::kFloat32;
    case DtypeChoice::fp16:
      return torch::kFloat16;
    case DtypeChoice::bf16:
      return torch::kBFloat16;
    case DtypeChoice::automatic:
      break;
  }
  return default_dtype(device);
}

// Every embedding in --embeddings-dir and $SDGEN_EMBEDDINGS_DIR (A1111 loads
// its whole folder at start): files that do not fit this model, pickles and
// name clashes are skipped with one warning each kind.
void load_embeddings(ModelSession& session, const Settings& run) {
  std::vector<std::string> dirs = run.embeddings_dir;
  if (const char* env = std::getenv("SDGEN_EMBEDDINGS_DIR"))
    for (auto& dir : formats::split_path_list(env)) dirs.push_back(dir);
  std::vector<TextualInversion> loaded;
  std::vector<std::string> unfit, pickled;
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      if (!run.quiet) std::cerr << "sdgen: warning: embeddings folder " << dir << " not found\n";
      continue;
    }
    std::vector<fs::path> files;
    for (auto it = fs::recursive_directory_iterator(
             dir, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file(ec)) files.push_back(it->path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      const std::string ext = f.extension().string();
      if (is_pickle_file_name(f.string())) {
        pickled.push_back(f.string());
        continue;
      }
      if (ext != ".safetensors") continue;
      const std::string name = f.stem().string();
      if (session.embedding_hashes.count(name)) continue;  // the first of a name wins
      try {
        loaded.push_back(read_textual_inversion(f.string(), *session.model));
        session.embedding_hashes[name] = sha256_file_hex(f.string()).substr(0, 12);
      } catch (const Error& e) {
        unfit.push_back(e.what());
      }
    }
  }
  if (!run.quiet) {
    for (const auto& why : unfit) std::cerr << "sdgen: warning: embedding skipped: " << why << "\n";
    if (!pickled.empty()) {
      std::string names;
      for (const auto& n : pickled)
        names += (names.empty() ? "" : ", ") + fs::path(n).filename().string();
      std::cerr << "sdgen: warning: pickled embeddings skipped (" << names
                << "): unpickling can run code; " << convert_command_hint(pickled.front())
                << (pickled.size() > 1 ? " (and likewise the others)" : "") << "\n";
    }
  }
  session.pipeline->set_embeddings(std::move(loaded));
}

// A1111's "VAE hash" / "VAE" of --vae: the file's short SHA-256 and its name
// with the extension.
void identify_vae(ModelSession& session, const Settings& run) {
  if (session.model->vae_file.empty()) return;
  try {
    session.vae_hash10 = model_sha256(session.model->vae_file).substr(0, 10);
  } catch (const std::exception&) {
    session.vae_hash10.clear();
  }
  fs::path p = fs::path(run.vae).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  session.vae_name = p.filename().string();
}

}  // namespace

void resolve_device(const Settings& run, torch::Device& device, torch::ScalarType& dtype) {
  try {
    device = device_from_name(to_string(run.device));
  } catch (const Error& e) {
    throw CliError(kExitUsage, e.what());
  }
  dtype = torch_dtype(run.dtype, device);
  if (!device.is_cuda() && dtype == torch::kFloat16)
    throw CliError(kExitUsage, "--dtype fp16 is not supported on the CPU; use fp32 or bf16");
}

void load_session(ModelSession& session, const Settings& run, const MemoryRequest* known) {
  LoadOptions load;
  session.model_path = load.model_path = run.model.empty() ? default_model_dir() : run.model;
  if (run.model.empty() && !fs::exists(load.model_path))
    throw CliError(kExitModel, "no --model given and the default model " + load.model_path +
                                   " does not exist; run scripts/generate.sh once, or pass "
                                   "--model PATH");
  load.config_dir = run.config_dir;
  load.tokenizer_path = run.tokenizer;
  load.vae_path = run.vae;
  load.prediction_type = to_string(run.prediction);
  load.device = session.device;
  load.dtype = session.dtype;
  load.weights_as_stored = weights_as_stored_from_name(to_string(run.dtype), session.device);
  load.verbose = !run.quiet;
  load.cuda_graphs = !run.no_cuda_graphs;
  load.channels_last = run.channels_last == ChannelsLast::on    ? 1
                       : run.channels_last == ChannelsLast::off ? 0
                                                                : -1;

  // Fail before loading when the weights (and the known request's
  // activations) cannot fit.
  if (!run.no_memory_check) {
    const std::string problem = memory_problem_before_load(load, known);
    if (!problem.empty()) throw CliError(kExitGeneration, problem);
  }

  // The model hash (first 10 hex of the SHA-256) is computed while the model loads.
  auto hash = std::async(std::launch::async, [path = load.model_path]() {
    try {
      return model_sha256(path).substr(0, 10);
    } catch (const std::exception&) {
      return std::string();
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  try {
    session.model = std::make_unique<StableDiffusionModel>(load_model(load));
  } catch (const Error& e) {
    hash.wait();
    throw CliError(kExitModel, e.what());
  } catch (const c10::Error& e) {
    hash.wait();
    if (is_out_of_memory(e)) throw CliError(kExitGeneration, load_out_of_memory_text(load));
    throw CliError(kExitModel, e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    hash.wait();
    throw CliError(kExitGeneration, load_out_of_memory_text(load));
  }
  session.load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const StableDiffusionModel& model = *session.model;
  SettingLayer& layer = session.model_layer;
  // The model folder's layer: the guidance rescale it asks for, its native
  // size (diffusers' unet.config.sample_size * vae_scale_factor) and SDXL's
  // pipeline defaults.
  if (model.default_guidance_rescale)
    layer.set("guidance_rescale", *model.default_guidance_rescale);
  // SDXL: diffusers' StableDiffusionXLPipeline defaults, the model's own
  // scheduler (Euler for SDXL base; its spacing from the scheduler config)
  // and guidance 5.0.
  if (model.is_sdxl()) {
    if (const auto own = find_sampler(model.scheduler_config.class_name))
      layer.set("sampler", to_string(*own));
    layer.set("cfg_scale", 5.0);
  }
  const int native = model.unet->config().sample_size * model.vae->downsample_factor();
  try {
    layer.set_checked(setting("width"), native);
    layer.set_checked(setting("height"), native);
  } catch (const SettingError&) {  // an odd config: the built-in 512 stays
    layer.erase("width");
  }
  session.model_hash10 = hash.get();
  session.model_name = a1111_model_name(load.model_path);
  identify_vae(session, run);
  session.pipeline = std::make_unique<Pipeline>(*session.model);
  session.loras = std::make_unique<LoraLibrary>(*session.model, run.lora_dir, run.quiet);
  load_embeddings(session, run);
  session.pipeline->set_long_prompt(run.long_prompt);
}

void prepare_job(ModelSession& session, Job& job) {
  session.pipeline->validate(job.request);
  session.pipeline->make_request_scheduler(job.request);  // sampler/eta combinations
  job.loras = session.loras->resolve(job.settings);
}

std::string job_memory_problem(ModelSession& session, const Job& job) {
  const GenerationRequest& r = job.request;
  const int chunks = std::max(session.pipeline->prompt_chunk_count(r.prompt),
                              session.pipeline->prompt_chunk_count(r.negative_prompt));
  MemoryRequest request = memory_request(r, chunks);
  request.lora_copy_bytes = session.loras->new_copy_bytes(job.loras);
  return memory_problem(*session.model, request);
}

GenerationResult generate_job(ModelSession& session, Job& job, const StepCallback& on_step) {
  session.loras->activate(job.loras);
  GenerationResult result = session.pipeline->generate(job.request, on_step);
  job.embeddings_used = session.pipeline->embeddings_used();
  return result;
}

std::string jobs_batch_mismatch(const ModelSession& session, const Job& a, const Job& b) {
  if (!(a.loras == b.loras)) return "the LoRAs differ";
  return session.pipeline->batch_mismatch(a.request, b.request);
}

std::string jobs_memory_problem(ModelSession& session, const std::vector<const Job*>& jobs) {
  if (jobs.empty()) return "";
  // Same size and chunk count (batch_mismatch): the first job's request
  // with every job's images.
  const GenerationRequest& r = jobs.front()->request;
  const int chunks = std::max(session.pipeline->prompt_chunk_count(r.prompt),
                              session.pipeline->prompt_chunk_count(r.negative_prompt));
  MemoryRequest request = memory_request(r, chunks);
  request.batch_size = 0;
  for (const Job* job : jobs) request.batch_size += job->request.batch_size;
  request.lora_copy_bytes = session.loras->new_copy_bytes(jobs.front()->loras);
  return memory_problem(*session.model, request);
}

std::vector<GenerationResult> generate_jobs(ModelSession& session, const std::vector<Job*>& jobs,
                                            const StepCallback& on_step) {
  if (jobs.empty()) return {};
  session.loras->activate(jobs.front()->loras);
  std::vector<GenerationRequest> requests;
  for (const Job* job : jobs) requests.push_back(job->request);
  auto results = session.pipeline->generate_batch(requests, on_step);
  for (size_t k = 0; k < jobs.size(); ++k)
    jobs[k]->embeddings_used = session.pipeline->batch_embeddings_used().at(k);
  return results;
}

std::string image_parameters(const ModelSession& session, const Job& job, int pos) {
  ImageMetadata meta;
  meta.model_hash = session.model_hash10;
  meta.model_name = session.model_name;
  meta.vae_hash = session.vae_hash10;
  meta.vae_name = session.vae_name;
  meta.batch_pos = pos;
  for (const auto& l : job.loras) meta.lora_hashes.emplace_back(l.name, l.hash);
  for (const auto& name : job.embeddings_used)
    meta.ti_hashes.emplace_back(name, session.embedding_hashes.at(name));
  return format_a1111_parameters(a1111_parameters(job.settings, meta));
}

}  // namespace sdgen::cli
