#include "resources.h"

#include <csignal>

#include <torch/torch.h>

#include "sdgen/interrupt.h"

namespace sdgen::cli {

void throw_if_interrupted() {
  if (interrupted()) throw Interrupted();
}

std::string interrupted_line(int64_t images_written) {
  const int sig = interrupt_signal();
  return std::string("sdgen: interrupted (") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") +
         "): " + std::to_string(images_written) + (images_written == 1 ? " image" : " images") +
         " written; the image in progress was abandoned";
}

MemoryRequest memory_request(const GenerationRequest& r, int prompt_chunks) {
  MemoryRequest m;
  m.width = r.width;
  m.height = r.height;
  m.batch_size = r.batch_size;
  m.guided = r.cfg_scale > 1.0;
  m.vae_tiling = r.vae_tiling;
  m.img2img = r.init_image.defined();
  m.prompt_chunks = prompt_chunks;
  return m;
}

namespace {

MemorySettings settings_of(const LoadOptions& load) {
  MemorySettings s;
  s.device = load.device;
  s.dtype = load.dtype;
  s.vae_dtype = load.vae_dtype.value_or(load.dtype);
  s.cuda_graphs = load.cuda_graphs;
  s.weights_as_stored = load.weights_as_stored && load.device.is_cpu();
  return s;
}

// load_model's VAE dtype: an SDXL VAE with force_upcast decodes in fp32
// when the model runs in fp16.
MemorySettings settings_of(const LoadOptions& load, const ModelFootprint& footprint) {
  MemorySettings s = settings_of(load);
  if (!load.vae_dtype && footprint.text_encoder_2 && footprint.vae.force_upcast &&
      load.dtype == torch::kHalf)
    s.vae_dtype = torch::kFloat32;
  return s;
}

MemorySettings settings_of(const StableDiffusionModel& model) {
  MemorySettings s;
  s.device = model.device;
  s.dtype = model.dtype;
  s.vae_dtype = model.vae_dtype;
  s.cuda_graphs = model.cuda_graphs;
  s.weights_as_stored = model.weights_as_stored;
  return s;
}

}  // namespace

std::string memory_problem_before_load(const LoadOptions& load, const MemoryRequest* request) {
  ModelFootprint footprint;
  try {
    footprint = inspect_model_files(load);
  } catch (const std::exception&) {
    return "";  // load_model reports what is wrong with the files
  }
  const MemorySettings settings = settings_of(load, footprint);
  MemoryEstimate estimate =
      estimate_memory(footprint, settings, request ? *request : MemoryRequest{});
  if (!request) {
    estimate.total -= estimate.peak_activations();
    estimate.peak_stage.clear();
  }
  return memory_check_message(estimate, available_memory(load.device), settings,
                              request ? *request : MemoryRequest{});
}

std::string memory_problem(const StableDiffusionModel& model, const MemoryRequest& request) {
  const MemorySettings settings = settings_of(model);
  const MemoryEstimate estimate = estimate_memory(model_footprint(model), settings, request);
  return memory_check_message(estimate, available_memory(model.device, estimate.weights), settings,
                              request);
}

std::string load_out_of_memory_text(const LoadOptions& load) {
  release_cached_memory(load.device);
  MemorySettings settings = settings_of(load);
  MemoryEstimate estimate;
  try {
    const ModelFootprint footprint = inspect_model_files(load);
    settings = settings_of(load, footprint);
    estimate = estimate_memory(footprint, settings, MemoryRequest{});
  } catch (const std::exception&) {
  }
  estimate.peak_stage.clear();  // the weights alone
  std::string m = "out of memory on " + load.device.str() + " while loading the model";
  if (estimate.weights > 0) m += " (its weights need about " + format_bytes(estimate.weights) + ")";
  return m + "; try " + memory_suggestions(estimate, settings, MemoryRequest{});
}

std::string generation_error_text(const std::exception& error, const StableDiffusionModel& model,
                                  const MemoryRequest& request) {
  if (is_out_of_memory(error)) {
    release_cached_memory(model.device);
    const MemorySettings settings = settings_of(model);
    return out_of_memory_message(estimate_memory(model_footprint(model), settings, request),
                                 settings, request);
  }
  const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
  return std::string("generation failed: ") +
         (c10_error ? c10_error->what_without_backtrace() : error.what());
}

}  // namespace sdgen::cli
