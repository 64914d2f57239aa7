#include "sdgen/pipeline.h"

#include "sdgen/runtime.h"

#include <chrono>
#include <iostream>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/cuda.h>

#include "unet_graph.h"

#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/inpaint.h"
#include "sdgen/rng.h"
#include "sdgen/schedulers/ddim.h"
#include "sdgen/schedulers/scheduler.h"

namespace sdgen {

void Pipeline::validate(const GenerationRequest& r) const {
  // The table's rules first (the same limits the command line and prompt
  // files check), as "steps 0: must be between 1 and 1000".
  const Settings settings = settings_of_request(r);
  for (const char* name : {"width", "height", "steps", "cfg_scale", "guidance_rescale",
                           "batch_size", "clip_skip", "eta", "strength"}) {
    if (std::string(name) == "strength" && !r.init_image.defined()) continue;
    const SettingSpec& spec = setting(name);
    const auto value = spec.get(settings);
    try {
      spec.check(value);
    } catch (const SettingError& e) {
      throw Error(spec.name + " " + value.dump() + ": " + e.what());
    }
  }
  // The UNet upsamples to each skip connection's size (diffusers' upsample_size),
  // so any latent size works; only the VAE factor constrains the image size.
  const int factor = model_.vae->downsample_factor();
  for (auto [name, v] : {std::pair<const char*, int>{"width", r.width}, {"height", r.height}})
    if (v % factor != 0)
      throw Error(std::string(name) + " " + std::to_string(v) + " must be a positive multiple of " +
                  std::to_string(factor));
  int layers = model_.text_encoder->config().num_hidden_layers;
  if (model_.text_encoder_2)
    layers = std::min(layers, model_.text_encoder_2->config().num_hidden_layers);
  if (r.clip_skip > layers)
    throw Error("clip skip " + std::to_string(r.clip_skip) + " must be between 1 and " +
                std::to_string(layers));
  if (!model_.is_sdxl() && r.size_conditioning.any()) {
    const Settings s = settings_of_request(r);
    for (const char* name :
         {"original_size", "target_size", "crop_top_left", "negative_original_size",
          "negative_target_size", "negative_crop_top_left"})
      if (!setting(name).get(s).get<std::string>().empty())
        throw Error(setting(name).flag + " applies to SDXL models only; this is " + model_.family);
  }
  if (r.init_image.defined()) {
    if (r.init_image.dim() != 3 || r.init_image.size(2) != 3 ||
        r.init_image.scalar_type() != torch::kUInt8)
      throw Error("init image must be an RGB uint8 image [H, W, 3]");
    if (static_cast<int>(r.steps * r.strength) < 1)
      throw Error("strength " + std::to_string(r.strength) + " with " + std::to_string(r.steps) +
                  " steps leaves no step to run; raise --strength or --steps");
  }
  const int64_t latent_channels = model_.vae->config().latent_channels;
  const int64_t unet_channels = model_.unet->config().in_channels;
  if (unet_channels != latent_channels && unet_channels != 2 * latent_channels + 1)
    throw Error("the UNet takes " + std::to_string(unet_channels) +
                " input channels; sdgen runs text-to-image UNets (" +
                std::to_string(latent_channels) + ") and inpainting UNets (" +
                std::to_string(2 * latent_channels + 1) + ")");
  if (r.mask.defined()) {
    if (!r.init_image.defined())
      throw Error("a mask needs an init image: the image whose masked part is repainted");
    if (r.mask.dim() != 2 || r.mask.scalar_type() != torch::kUInt8)
      throw Error("the mask must be a gray uint8 image [H, W]");
    if (binarize_mask(r.mask, r.height, r.width).max().item<float>() < 0.5f)
      throw Error(
          "the mask is all black (nothing to repaint): white (>= 128) marks what to "
          "repaint, black what to keep");
  } else if (r.paste_back) {
    throw Error("paste-back needs a mask (and an init image)");
  }
  if (r.mask_blur < 0) throw Error("mask blur " + std::to_string(r.mask_blur) + " must be >= 0");
}

std::unique_ptr<Scheduler> Pipeline::make_request_scheduler(const GenerationRequest& r) const {
  SchedulerConfig config = model_.scheduler_config;
  if (r.schedule != SigmaSchedule::automatic) {
    config.use_karras_sigmas = r.schedule == SigmaSchedule::karras;
    config.raw["use_karras_sigmas"] = config.use_karras_sigmas;
  }
  if (!r.timestep_spacing.empty()) {
    config.timestep_spacing = r.timestep_spacing;
    config.raw["timestep_spacing"] = r.timestep_spacing;
  }
  auto scheduler = make_scheduler(r.sampler, config);
  if (auto* ddim = dynamic_cast<DDIMScheduler*>(scheduler.get())) {
    ddim->set_eta(r.eta);
  } else if (r.eta > 0) {
    throw Error("eta applies to the ddim sampler only");
  }
  scheduler->set_timesteps(r.steps);
  return scheduler;
}

torch::Tensor Pipeline::preprocess_image(const torch::Tensor& image, int height, int width) const {
  // pil_to_numpy (x / 255) then normalize (2x - 1), as VaeImageProcessor does;
  // resized by resize_unit_images (bicubic, not diffusers' Lanczos).
  auto x = image.to(torch::kFloat32).div(255.0).permute({2, 0, 1}).unsqueeze(0).contiguous();
  x = resize_unit_images(x, height, width);
  return (2.0 * x - 1.0).to(model_.device, model_.dtype);
}

torch::Tensor Pipeline::sample_image_latents(const torch::Tensor& image, Generator& generator) {
  auto x = image.to(model_.device, vae_dtype_);
  if (model_.channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  const auto posterior = vae_->encode(x);
  const auto eps = generator.randn(posterior.mean.sizes()).to(model_.device, model_.dtype);
  return (posterior.mean.to(model_.dtype) + posterior.std.to(model_.dtype) * eps) *
         model_.vae->config().scaling_factor;
}

// The UNet's text conditioning of one request, as generate() batches it:
// context rows [uncond x batch, cond x batch] (cond only without guidance)
// and SDXL's addition embedding rows in the same order.
Pipeline::Conditioning Pipeline::encode_conditioning(const GenerationRequest& r) {
  const int64_t batch = r.batch_size;
  const bool guided = r.cfg_scale > 1.0;
  // num_images_per_prompt copies of each embedding (prompt_embeds.repeat(1, n, 1)).
  // Long prompts (A1111 75-token chunks): prompt and negative prompt are
  // padded to the same number of chunks so that they batch together.
  const int chunks =
      guided ? std::max(prompt_chunk_count(r.prompt), prompt_chunk_count(r.negative_prompt)) : 0;
  const auto positive = encode_prompt_embeddings({r.prompt}, r.clip_skip, chunks);
  auto cond = positive.context.repeat({batch, 1, 1});
  torch::Tensor context = cond;
  torch::Tensor negative_pooled;
  if (guided) {
    // diffusers' encode_prompt applies clip_skip to the prompt only; the
    // negative prompt always uses the default layer (SD1/SD2: the last, SDXL:
    // the penultimate). Kept for parity.
    torch::Tensor uncond;
    if (model_.is_sdxl() && model_.force_zeros_for_empty_prompt && r.negative_prompt.empty()) {
      // StableDiffusionXLPipeline: no negative prompt and
      // force_zeros_for_empty_prompt -> zero embeddings and pooled output.
      uncond = torch::zeros_like(cond);
      negative_pooled = torch::zeros_like(positive.pooled);
    } else {
      const auto negative = encode_prompt_embeddings({r.negative_prompt}, 1, chunks);
      uncond = negative.context.repeat({batch, 1, 1});
      negative_pooled = negative.pooled;
    }
    context = torch::cat({uncond, cond}, 0);
  }
  // SDXL: the addition embedding of the pooled text and size/crop ids, rows
  // in the UNet batch's order ([uncond x batch, cond x batch]); it does not
  // change with the timestep, so it is computed once.
  torch::Tensor added;
  if (model_.is_sdxl()) {
    const auto [time_ids, negative_time_ids] = sdxl_add_time_ids(r);
    auto text_embeds = positive.pooled.repeat({batch, 1});
    auto ids = time_ids.repeat({batch, 1});
    if (guided) {
      text_embeds = torch::cat({negative_pooled.repeat({batch, 1}), text_embeds}, 0);
      ids = torch::cat({negative_time_ids.repeat({batch, 1}), ids}, 0);
    }
    added = unet_->addition_embedding(text_embeds, ids.to(model_.device));
  }
  return {context, added};
}

// img2img (StableDiffusionImg2ImgPipeline.get_timesteps): the index of the
// first timestep to run, steps - int(steps * strength) steps (times the
// scheduler order) in; 0 for txt2img. Sets the scheduler's begin index.
size_t Pipeline::first_step_index(const GenerationRequest& r, Scheduler& scheduler) const {
  if (!r.init_image.defined()) return 0;
  const int init_timestep = std::min(static_cast<int>(r.steps * r.strength), r.steps);
  const int t_start = std::max(r.steps - init_timestep, 0);
  const size_t first_step = static_cast<size_t>(t_start) * static_cast<size_t>(scheduler.order());
  scheduler.set_begin_index(static_cast<int>(first_step));
  return first_step;
}

// The starting latents of txt2img and img2img without a mask (prepare_latents),
// drawn from `generator` in diffusers' order.
torch::Tensor Pipeline::initial_latents(const GenerationRequest& r, Scheduler& scheduler,
                                        Generator& generator, size_t first_step) {
  const int64_t batch = r.batch_size;
  const int factor = model_.vae->downsample_factor();
  const int64_t channels = model_.vae->config().latent_channels;
  const int64_t lh = r.height / factor, lw = r.width / factor;
  if (!r.init_image.defined()) {
    auto latents = generator.randn({batch, channels, lh, lw}).to(model_.device, model_.dtype);
    return latents * scheduler.init_noise_sigma();
  }
  // prepare_latents: posterior sample (drawn first), scaled, repeated for
  // the batch, then noised to the first timestep with a second draw.
  auto image = preprocess_image(r.init_image, r.height, r.width);
  auto init = sample_image_latents(image, generator).repeat({batch, 1, 1, 1});
  auto noise = generator.randn(init.sizes()).to(model_.device, model_.dtype);
  return scheduler.add_noise(init, noise, scheduler.timesteps()[first_step]);
}

// Pipeline::encode_prompts and prompt_chunk_count (A1111 prompt syntax and
// 75-token chunks) are in pipeline_prompts.cpp.

// Follows diffusers' StableDiffusionPipeline.__call__: encode_prompt (negative
// first, [uncond, cond] batched when guidance > 1), prepare_latents (CPU
// randn from the seeded generator, times init_noise_sigma), the denoising
// loop with classifier-free guidance, then vae.decode(latents / scaling_factor).
GenerationResult Pipeline::generate(const GenerationRequest& r, const StepCallback& on_step) {
  validate(r);
  torch::NoGradGuard no_grad;
  using Clock = std::chrono::steady_clock;
  auto seconds_since = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  GenerationResult out;
  embeddings_used_.clear();
  const int64_t batch = r.batch_size;

  synchronize();
  auto clock = Clock::now();
  const auto [context, added] = encode_conditioning(r);
  synchronize();
  out.timings.text_s = seconds_since(clock);
  clock = Clock::now();

  auto scheduler = make_request_scheduler(r);
  Generator generator(r.seed);
  const int factor = model_.vae->downsample_factor();
  const int64_t channels = model_.vae->config().latent_channels;
  const int64_t lh = r.height / factor, lw = r.width / factor;
  // A 9-channel UNet (an inpainting model) takes the mask and the masked
  // image's latents beside the latents; a plain one inpaints by blending.
  const bool inpaint_unet = model_.unet->config().in_channels != channels;
  const bool inpainting = r.mask.defined() || inpaint_unet;
  torch::Tensor latents;
  const size_t first_step = first_step_index(r, *scheduler);
  // Inpainting: the mask at the latents' size (1 = repaint), the masked
  // image's latents (9-channel UNets), the image latents and the noise (the
  // blend of plain UNets).
  torch::Tensor mask_latents, masked_image_latents, image_latents, noise;
  torch::Tensor mask;  // [1, 1, H, W] of 0 (keep) and 1 (repaint), also for paste-back
  if (!inpainting) {
    latents = initial_latents(r, *scheduler, generator, first_step);
  } else {
    // StableDiffusionInpaintPipeline.__call__: prepare_latents (the image's
    // posterior sample, drawn only for a plain UNet or strength < 1, then
    // the noise), then prepare_mask_latents (the masked image's posterior
    // sample, drawn for every UNet; a plain UNet does not use it).
    const bool strength_max = !r.init_image.defined() || r.strength == 1.0;
    torch::Tensor image;  // [1, 3, H, W] in [-1, 1]; none: txt2img on an inpainting UNet
    if (r.init_image.defined()) image = preprocess_image(r.init_image, r.height, r.width);
    if (!inpaint_unet || !strength_max)
      image_latents = sample_image_latents(image, generator).repeat({batch, 1, 1, 1});
    noise = generator.randn({batch, channels, lh, lw}).to(model_.device, model_.dtype);
    latents = strength_max
                  ? noise * scheduler->init_noise_sigma()
                  : scheduler->add_noise(image_latents, noise, scheduler->timesteps()[first_step]);
    mask = r.mask.defined() ? binarize_mask(r.mask, r.height, r.width)
                            : torch::ones({1, 1, r.height, r.width}, torch::kFloat32);
    const auto masked_image =
        image.defined()
            ? image * (mask < 0.5).to(image.device(), image.scalar_type())
            : torch::zeros({1, 3, r.height, r.width},
                           torch::TensorOptions().dtype(model_.dtype).device(model_.device));
    if (inpaint_unet) {
      masked_image_latents = sample_image_latents(masked_image, generator).repeat({batch, 1, 1, 1});
    } else {
      generator.randn({1, channels, lh, lw});  // the same draw, its result unused
    }
    // prepare_mask_latents: nearest-neighbour down to the latents' size.
    namespace F = torch::nn::functional;
    mask_latents =
        F::interpolate(
            mask,
            F::InterpolateFuncOptions().size(std::vector<int64_t>{lh, lw}).mode(torch::kNearest))
            .to(model_.device, model_.dtype)
            .repeat({batch, 1, 1, 1});
  }

  graph_context_set_ = false;
  const auto& timesteps = scheduler->timesteps();
  for (size_t i = first_step; i < timesteps.size(); ++i) {
    const double t = timesteps[i];
    auto model_input = scheduler->scale_model_input(latents, t);
    if (inpaint_unet)
      model_input = torch::cat({model_input, mask_latents, masked_image_latents}, 1);
    auto noise_pred = guided_noise(model_input, t, context, added, r);
    latents = scheduler->step(noise_pred, t, latents, generator);
    if (inpainting && !inpaint_unet) {
      // The kept part: the image latents noised to the next timestep (as
      // they are after the last one), the sampler's latents elsewhere.
      auto known = image_latents;
      if (i + 1 < timesteps.size())
        known = scheduler->add_noise(image_latents, noise, timesteps[i + 1]);
      latents = (1 - mask_latents) * known + mask_latents * latents;
    }
    ++out.timings.steps;
    check_finite_latents(latents, static_cast<int>(i - first_step) + 1,
                         static_cast<int>(timesteps.size() - first_step), scheduler->name());
    if (on_step)
      on_step(
          {static_cast<int>(i - first_step), static_cast<int>(timesteps.size() - first_step), t},
          latents);
  }
  synchronize();
  out.timings.sampling_s = seconds_since(clock);
  clock = Clock::now();

  auto decoded = decode_latents(latents, r.vae_tiling);
  out.images = to_unit_images(decoded);
  if (r.paste_back && r.mask.defined() && r.init_image.defined()) {
    // A1111's overlay: the init image (as resized for the generation) outside
    // the mask, feathered by the mask blur.
    auto original = resize_unit_images(
        r.init_image.to(torch::kFloat32).div(255.0).permute({2, 0, 1}).unsqueeze(0), r.height,
        r.width);
    const auto original_u8 =
        original.squeeze(0).permute({1, 2, 0}).mul(255).round().to(torch::kUInt8).contiguous();
    out.images = paste_back(out.images, original_u8, blur_mask(mask[0][0], r.mask_blur));
  }
  out.images_u8 = (out.images * 255).round().to(torch::kUInt8);
  out.latents = latents.to(torch::kCPU, torch::kFloat32);
  out.timings.decode_s = seconds_since(clock);
  return out;
}

Pipeline::Pipeline(const StableDiffusionModel& model)
    : model_(model),
      text_encoder_(model.text_encoder),
      text_encoder_2_(model.text_encoder_2),
      unet_(model.unet),
      vae_(model.vae),
      vae_dtype_(model.vae_dtype) {}
Pipeline::~Pipeline() = default;

// Non-finite latents (an fp16/bf16 overflow, a broken checkpoint) would decode
// to a black image: stop at the step they appear. One check per step on the
// CPU (a few microseconds); on CUDA each check waits for the GPU, so every
// kFiniteCheckInterval steps and after the last one.
void Pipeline::check_finite_latents(const torch::Tensor& latents, int step, int total,
                                    const std::string& sampler) const {
  constexpr int kFiniteCheckInterval = 10;
  const bool cuda = model_.device.is_cuda();
  if (cuda && step % kFiniteCheckInterval != 0 && step != total) return;
  if (torch::isfinite(latents).all().item<bool>()) return;
  const bool nan = torch::isnan(latents).any().item<bool>();
  throw Error(std::string("the latents became ") + (nan ? "NaN" : "Inf") +
              (cuda ? " by step " : " at step ") + std::to_string(step) + "/" +
              std::to_string(total) + " (sampler " + sampler + ", " + dtype_name(model_.dtype) +
              " on " + model_.device.str() + "); no image written" +
              (model_.dtype == torch::kFloat32 ? "; the model's weights may be broken (NaN/Inf)"
                                               : "; try --dtype fp32"));
}

void Pipeline::synchronize() const {
  if (model_.device.is_cuda()) torch::cuda::synchronize(model_.device.index());
}

// diffusers StableDiffusionPipeline.__call__ (guidance) and rescale_noise_cfg.
torch::Tensor combine_guidance(const torch::Tensor& uncond, const torch::Tensor& cond,
                               double cfg_scale, double guidance_rescale) {
  auto guided = uncond + cfg_scale * (cond - uncond);
  if (guidance_rescale <= 0) return guided;
  const std::vector<int64_t> dims{1, 2, 3};
  const auto rescaled = guided * (cond.std(dims, true, true) / guided.std(dims, true, true));
  return guidance_rescale * rescaled + (1 - guidance_rescale) * guided;
}

torch::Tensor Pipeline::guided_noise(const torch::Tensor& latents, double t,
                                     const torch::Tensor& context, const torch::Tensor& added,
                                     const GenerationRequest& r,
                                     const std::vector<int64_t>& splits) {
  const bool guided = r.cfg_scale > 1.0;
#ifdef SDGEN_WITH_CUDA
  if (model_.device.is_cuda() && model_.cuda_graphs && !graphs_failed_) {
    UNetGraphKey key;
    key.batch = latents.size(0);
    key.height = latents.size(2);
    key.width = latents.size(3);
    key.context_length = context.size(1);
    key.guided = guided;
    key.cfg_scale = r.cfg_scale;
    key.guidance_rescale = r.guidance_rescale;
    try {
      if (!graph_ || !(graph_->key() == key)) {
        graph_.reset();  // frees the old graph's memory pool first
        graph_ = capture_unet_graph(unet_, key, context, added, model_.channels_last);
        graph_context_set_ = true;
      }
      if (graph_) {
        if (!graph_context_set_) {
          graph_->set_context(context, added);
          graph_context_set_ = true;
        }
        return graph_->run(latents, t);
      }
    } catch (const std::exception& e) {
      graph_.reset();
      graphs_failed_ = true;
      std::cerr << "sdgen: warning: CUDA graph capture failed, running the UNet eagerly ("
                << e.what() << ")\n";
    }
  }
#endif
  auto model_input = guided ? torch::cat({latents, latents}, 0) : latents;
  if (model_.channels_last) model_input = model_input.contiguous(torch::MemoryFormat::ChannelsLast);
  auto t_tensor = torch::full({model_input.size(0)}, t,
                              torch::TensorOptions().dtype(torch::kFloat32).device(model_.device));
  auto noise_pred = unet_->forward(model_input, t_tensor, context, added);
  if (guided && splits.size() > 1) {
    // A mixed batch: each request's guidance on its own rows, so that the
    // rescale's per-image standard deviations reduce exactly as alone.
    const int64_t half = noise_pred.size(0) / 2;
    std::vector<torch::Tensor> parts;
    int64_t offset = 0;
    for (const int64_t n : splits) {
      parts.push_back(combine_guidance(noise_pred.narrow(0, offset, n),
                                       noise_pred.narrow(0, half + offset, n), r.cfg_scale,
                                       r.guidance_rescale));
      offset += n;
    }
    noise_pred = torch::cat(parts, 0);
  } else if (guided) {
    auto chunks = noise_pred.chunk(2, 0);
    noise_pred = combine_guidance(chunks[0], chunks[1], r.cfg_scale, r.guidance_rescale);
  }
  return noise_pred.contiguous();
}

namespace {

// A float32 copy of `vae` (same device, config and eval mode): each parameter
// and buffer converted as Module::to(kFloat32) converts them (set_data with
// Tensor::to, which keeps the memory format), so that the copy computes what
// the model's VAE would after ->to(kFloat32), without changing it.
AutoencoderKL fp32_copy(const AutoencoderKL& vae) {
  torch::NoGradGuard no_grad;
  // Building the module draws initial weights from libtorch's default CPU
  // generator; they are replaced below, so leave that generator as it was.
  auto generator = at::detail::getDefaultCPUGenerator();
  const torch::Tensor generator_state = generator.get_state();
  AutoencoderKL copy(vae->config());
  generator.set_state(generator_state);
  const auto parameters = vae->named_parameters();
  for (auto& p : copy->named_parameters())
    p.value().set_data(parameters[p.key()].to(torch::kFloat32));
  const auto buffers = vae->named_buffers();
  for (auto& b : copy->named_buffers()) b.value().set_data(buffers[b.key()].to(torch::kFloat32));
  copy->train(vae->is_training());
  return copy;
}

}  // namespace

torch::Tensor Pipeline::decode_latents(const torch::Tensor& latents, bool tiled) {
  auto z = (latents / vae_->config().scaling_factor).to(vae_dtype_);
  if (model_.channels_last) z = z.contiguous(torch::MemoryFormat::ChannelsLast);
  auto decode = [&](const torch::Tensor& x) {
    return tiled ? vae_->tiled_decode(x) : vae_->decode(x);
  };
  auto decoded = decode(z);
  if (vae_dtype_ != torch::kFloat32 && !torch::isfinite(decoded).all().item<bool>()) {
    // The "black image" problem: SD VAEs overflow fp16 on some latents.
    std::cerr << "sdgen: warning: the " << dtype_name(vae_dtype_)
              << " VAE decode overflowed; decoding in fp32 from now on\n";
    vae_ = fp32_copy(model_.vae);
    vae_dtype_ = torch::kFloat32;
    vae_fp32_fallback_ = true;
    z = z.to(torch::kFloat32);
    decoded = decode(z);
  }
  // Never a black PNG: NaN/Inf left after the fp32 decode is an error.
  if (!torch::isfinite(decoded).all().item<bool>())
    throw Error(std::string("the VAE decode gave ") +
                (torch::isnan(decoded).any().item<bool>() ? "NaN" : "Inf") +
                " pixels (VAE in fp32, model in " + dtype_name(model_.dtype) +
                "); the latents were finite, so the VAE weights are likely broken; no image "
                "written");
  return decoded.to(torch::kFloat32).contiguous();
}

}  // namespace sdgen
