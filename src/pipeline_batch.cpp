// Mixed-prompt batching for Pipeline: several requests (different prompts,
// negative prompts, seeds) through one UNet call per step, each image the
// one its request makes alone.

#include <algorithm>
#include <chrono>
#include <memory>

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/pipeline.h"
#include "sdgen/rng.h"

namespace sdgen {
namespace {

// The 77-token chunks of a request's text context: generate() pads prompt and
// negative prompt to the longer of the two when it guides.
int context_chunks(const Pipeline& pipeline, const GenerationRequest& r) {
  int chunks = std::max(1, pipeline.prompt_chunk_count(r.prompt));
  if (r.cfg_scale > 1.0) chunks = std::max(chunks, pipeline.prompt_chunk_count(r.negative_prompt));
  return chunks;
}

}  // namespace

std::string Pipeline::batch_mismatch(const GenerationRequest& a, const GenerationRequest& b) const {
  // Inpainting keeps per-request masks and image latents in its loop; it
  // runs alone.
  if (model_.unet->config().in_channels != model_.vae->config().latent_channels)
    return "an inpainting UNet runs each request alone";
  if (a.mask.defined() || b.mask.defined()) return "inpainting (a mask) runs alone";
  if (a.width != b.width || a.height != b.height) return "the size differs";
  if (a.steps != b.steps) return "the steps differ";
  if (a.sampler != b.sampler) return "the sampler differs";
  if (a.schedule != b.schedule || a.timestep_spacing != b.timestep_spacing)
    return "the schedule differs";
  if (a.eta != b.eta) return "eta differs";
  if (a.cfg_scale != b.cfg_scale) return "the guidance scale differs";
  if (a.guidance_rescale != b.guidance_rescale) return "the guidance rescale differs";
  if (a.vae_tiling != b.vae_tiling) return "VAE tiling differs";
  if (a.init_image.defined() != b.init_image.defined()) return "txt2img and img2img";
  if (a.init_image.defined() && a.strength != b.strength) return "the strength differs";
  // Padding a context with empty chunks would change its attention: the
  // text contexts must be equally long as they are alone.
  if (context_chunks(*this, a) != context_chunks(*this, b))
    return "the prompts' 75-token chunk counts differ";
  return "";
}

// generate() for several requests: the text conditioning, the starting
// latents and every scheduler step per request (its own Generator and
// scheduler state, in diffusers' draw order); only the UNet call (and the VAE
// decode) sees the whole batch, rows [uncond of each request, cond of each
// request] as generate() orders one request's.
std::vector<GenerationResult> Pipeline::generate_batch(
    const std::vector<GenerationRequest>& requests, const StepCallback& on_step) {
  batch_embeddings_used_.clear();
  if (requests.empty()) return {};
  if (requests.size() == 1) {
    auto result = generate(requests.front(), on_step);
    batch_embeddings_used_.push_back(embeddings_used_);
    return {std::move(result)};
  }
  const GenerationRequest& first = requests.front();
  for (size_t k = 0; k < requests.size(); ++k) {
    validate(requests[k]);
    const std::string why = batch_mismatch(first, requests[k]);
    if (!why.empty())
      throw Error("request " + std::to_string(k) + " cannot share a batch with request 0: " + why);
  }
  torch::NoGradGuard no_grad;
  using Clock = std::chrono::steady_clock;
  auto seconds_since = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  GenerationTimings timings;
  const bool guided = first.cfg_scale > 1.0;

  synchronize();
  auto clock = Clock::now();
  // On the CPU each request's UNet call and VAE decode run on its own rows
  // (unless set_exact_cpu_batches(false)): libtorch's CPU matrix products
  // (OpenBLAS sgemm, Debian's 0.3.21 with its Haswell kernels) compute the
  // last rows of a product with another kernel than the others, so the rows
  // that end a request's product alone would round differently in the middle
  // of a batch (docs/performance.md, "Mixed-prompt batching"). On CUDA the
  // batch is one call, within fp16 rounding of alone.
  const bool one_call = !model_.device.is_cpu() || !exact_cpu_batches_;
  std::vector<Conditioning> conditioning;
  std::vector<torch::Tensor> uncond, cond, added_uncond, added_cond;
  std::vector<int64_t> splits;
  for (const auto& r : requests) {
    embeddings_used_.clear();
    const auto c = encode_conditioning(r);
    batch_embeddings_used_.push_back(embeddings_used_);
    if (!one_call) {
      conditioning.push_back(c);
      splits.push_back(r.batch_size);
      continue;
    }
    const int64_t n = r.batch_size;
    splits.push_back(n);
    cond.push_back(guided ? c.context.narrow(0, n, n) : c.context);
    if (guided) uncond.push_back(c.context.narrow(0, 0, n));
    if (c.added.defined()) {
      added_cond.push_back(guided ? c.added.narrow(0, n, n) : c.added);
      if (guided) added_uncond.push_back(c.added.narrow(0, 0, n));
    }
  }
  auto rows = [guided](std::vector<torch::Tensor> u, const std::vector<torch::Tensor>& c) {
    if (c.empty()) return torch::Tensor();
    if (!guided) return torch::cat(c, 0);
    u.insert(u.end(), c.begin(), c.end());
    return torch::cat(u, 0);
  };
  const torch::Tensor context = one_call ? rows(uncond, cond) : torch::Tensor();
  const torch::Tensor added = one_call ? rows(added_uncond, added_cond) : torch::Tensor();
  synchronize();
  timings.text_s = seconds_since(clock);
  clock = Clock::now();

  std::vector<std::unique_ptr<Scheduler>> schedulers;
  std::vector<Generator> generators;
  std::vector<torch::Tensor> latents;
  generators.reserve(requests.size());
  size_t first_step = 0;
  for (const auto& r : requests) {
    schedulers.push_back(make_request_scheduler(r));
    generators.emplace_back(r.seed);
    first_step = first_step_index(r, *schedulers.back());  // the same for all (same schedule)
    latents.push_back(initial_latents(r, *schedulers.back(), generators.back(), first_step));
  }

  graph_context_set_ = false;
  const auto& timesteps = schedulers.front()->timesteps();
  const int total = static_cast<int>(timesteps.size() - first_step);
  for (size_t i = first_step; i < timesteps.size(); ++i) {
    const double t = timesteps[i];
    std::vector<torch::Tensor> inputs, noise_preds;
    for (size_t k = 0; k < requests.size(); ++k)
      inputs.push_back(schedulers[k]->scale_model_input(latents[k], t));
    if (one_call) {
      const auto noise_pred = guided_noise(torch::cat(inputs, 0), t, context, added, first, splits);
      noise_preds = noise_pred.split_with_sizes(splits, 0);
    } else {
      for (size_t k = 0; k < requests.size(); ++k)
        noise_preds.push_back(guided_noise(inputs[k], t, conditioning[k].context,
                                           conditioning[k].added, requests[k]));
    }
    const int step = static_cast<int>(i - first_step) + 1;
    for (size_t k = 0; k < requests.size(); ++k) {
      latents[k] = schedulers[k]->step(noise_preds[k], t, latents[k], generators[k]);
      check_finite_latents(latents[k], step, total, schedulers[k]->name());
    }
    ++timings.steps;
    if (on_step) on_step({step - 1, total, t}, torch::cat(latents, 0));
  }
  synchronize();
  timings.sampling_s = seconds_since(clock);
  clock = Clock::now();

  std::vector<torch::Tensor> decoded;
  if (one_call) {
    decoded = decode_latents(torch::cat(latents, 0), first.vae_tiling).split_with_sizes(splits, 0);
  } else {
    for (const auto& l : latents) decoded.push_back(decode_latents(l, first.vae_tiling));
  }
  std::vector<GenerationResult> results(requests.size());
  for (size_t k = 0; k < requests.size(); ++k) {
    GenerationResult& out = results[k];
    out.images = to_unit_images(decoded[k].contiguous());
    out.images_u8 = (out.images * 255).round().to(torch::kUInt8);
    out.latents = latents[k].to(torch::kCPU, torch::kFloat32);
  }
  timings.decode_s = seconds_since(clock);
  for (auto& out : results) out.timings = timings;
  return results;
}

}  // namespace sdgen
