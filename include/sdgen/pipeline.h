#pragma once

// Text-to-image: the only place that knows the tokenizer, text encoder,
// scheduler, UNet and VAE together (diffusers' StableDiffusionPipeline).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sdgen/model.h"
#include "sdgen/schedulers/scheduler.h"
#include "sdgen/settings.h"
#include "sdgen/textual_inversion.h"

namespace sdgen {

// SDXL's micro-conditioning (diffusers' original_size, crops_coords_top_left,
// target_size and their negative_* counterparts). Sizes are (width, height)
// as everywhere in sdgen; diffusers' tuples are (height, width).
struct SizeConditioning {
  using Pair = std::optional<std::pair<int, int>>;
  Pair original_size;  // unset: the image size
  Pair target_size;    // unset: the image size
  Pair crop_top_left;  // (top, left); unset: (0, 0)
  // Unset: the positive value (diffusers uses the positive add_time_ids for
  // the negative batch unless it is given both negative sizes).
  Pair negative_original_size, negative_target_size, negative_crop_top_left;
  bool any() const {
    return original_size || target_size || crop_top_left || negative_original_size ||
           negative_target_size || negative_crop_top_left;
  }
};

struct GenerationRequest {
  std::string prompt;
  std::string negative_prompt;
  int steps = 50;
  double cfg_scale = 7.5;
  // diffusers' guidance_rescale (Lin et al. 2023, section 3.4): the guided
  // prediction's per-image standard deviation pulled back towards the
  // conditional one's by this share, 0 (off, diffusers' default) to 1.
  // Recommended with v-prediction models on a zero-terminal-SNR schedule.
  double guidance_rescale = 0.0;
  uint64_t seed = 0;
  int width = 512;
  int height = 512;
  int batch_size = 1;  // images per prompt, generated as one batch
  Sampler sampler = Sampler::ddim;
  double eta = 0.0;   // DDIM eta
  int clip_skip = 1;  // A1111 convention: 1 = last layer, 2 = penultimate
  // The sigma schedule of sigma-based samplers (diffusers' use_karras_sigmas).
  SigmaSchedule schedule = SigmaSchedule::automatic;
  // diffusers' timestep_spacing ("leading", "trailing", "linspace"); "" = the
  // model's scheduler config.
  std::string timestep_spacing;
  // img2img: uint8 [H, W, 3] image to start from (undefined for txt2img) and
  // how much of the schedule to run over it, 0 < strength <= 1.
  torch::Tensor init_image;
  double strength = 0.75;
  // Inpainting (with init_image): gray uint8 [H, W] (mask_to_gray), any size
  // (resized as the image is); >= 128 is repainted, the rest kept, as
  // diffusers' StableDiffusionInpaintPipeline: a 9-channel inpainting UNet
  // conditions on it, a plain one re-noises the kept part from the image
  // after every step. A 9-channel model without a mask repaints everything.
  torch::Tensor mask;
  // A1111's result instead of diffusers': the init image put back outside
  // the mask, feathered over mask_blur pixels (inpaint.h paste_back).
  bool paste_back = false;
  int mask_blur = 4;
  // Decode the latents in overlapping tiles (bounded memory for large images).
  bool vae_tiling = false;
  // SDXL only (an error for other models when any is set).
  SizeConditioning size_conditioning;
};

// SDXL's add_time_ids for a request: [1, 6] float32 (original height, width,
// crop top, left, target height, width), positive and negative
// (diffusers' StableDiffusionXLPipeline._get_add_time_ids).
std::pair<torch::Tensor, torch::Tensor> sdxl_add_time_ids(const GenerationRequest& request);

struct StepInfo {
  int index = 0;  // 0-based step
  int total = 0;
  double timestep = 0;
};
using StepCallback = std::function<void(const StepInfo&, const torch::Tensor& latents)>;

// Wall-clock seconds of each stage of one generate() call (device work
// finished before each clock is read).
struct GenerationTimings {
  double text_s = 0;      // tokenize + text encoder
  double sampling_s = 0;  // the denoising loop
  double decode_s = 0;    // VAE decode
  int steps = 0;          // UNet steps run
};

struct GenerationResult {
  torch::Tensor images;     // [B, H, W, 3] float32 in [0, 1] (CPU)
  torch::Tensor images_u8;  // [B, H, W, 3] uint8 (CPU), round(images * 255)
  torch::Tensor latents;    // final latents [B, 4, H/8, W/8] (CPU, float32)
  GenerationTimings timings;
};

// The request of `settings` (its seed, or 0 when none is set); the init
// image is read by the caller (`init_image` stays undefined).
GenerationRequest request_from_settings(const Settings& settings);
// The settings a request was made with (for its A1111 parameters; the init
// image, when there is one, is named "init image").
Settings settings_of_request(const GenerationRequest& request);

class UNetGraph;

// What the text encoders give the UNet for a list of prompts.
struct PromptEmbeddings {
  torch::Tensor context;  // [N, 77 * chunks, cross_attention_dim], the model's dtype and device
  // SDXL: the second encoder's projected pooled output [N, projection_dim]
  // (of each prompt's first chunk); undefined for SD1/SD2.
  torch::Tensor pooled;
};

// Classifier-free guidance of one step: uncond + cfg_scale * (cond - uncond),
// then, when guidance_rescale > 0, diffusers' rescale_noise_cfg (each image's
// standard deviation, unbiased over C, H, W, matched to cond's by that share).
torch::Tensor combine_guidance(const torch::Tensor& uncond, const torch::Tensor& cond,
                               double cfg_scale, double guidance_rescale);

// Runs a loaded model without changing it: the model's parameters, dtypes
// and fields stay as given (a Pipeline shares its modules, so several
// pipelines may run one model, one after another).
class Pipeline {
 public:
  explicit Pipeline(const StableDiffusionModel& model);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Throws Error describing the first invalid field (sizes, steps, guidance,
  // ...): the settings table's rules, then what this model allows.
  void validate(const GenerationRequest& request) const;
  // Tokenize + encode with A1111's prompt syntax (prompt_weights.h):
  // [N, 77 * chunks, hidden] in the model's dtype on its device. Each prompt
  // is split into 75-token chunks (one with LongPrompt::truncate), all
  // prompts are padded with empty chunks to max(min_chunks, the longest), and
  // emphasis weights are applied with the mean restored. A plain prompt of at
  // most 75 tokens gives exactly diffusers' [N, 77, hidden] embedding.
  // For SDXL the context is both encoders' states side by side (see
  // encode_prompt_embeddings).
  torch::Tensor encode_prompts(const std::vector<std::string>& prompts, int clip_skip,
                               int min_chunks = 0);
  // encode_prompts with SDXL's pooled output too. SDXL: clip_skip k takes
  // hidden_states[-max(k, 2)] of both encoders without the final layer norm.
  PromptEmbeddings encode_prompt_embeddings(const std::vector<std::string>& prompts, int clip_skip,
                                            int min_chunks = 0);
  // How many 77-token chunks encode_prompts gives `prompt` on its own; the
  // caller pads the negative and positive prompts to the larger count.
  int prompt_chunk_count(const std::string& prompt) const;
  // Prompts over 75 tokens: A1111's chunks (default) or diffusers' truncation.
  using LongPrompt = LongPromptMode;
  void set_long_prompt(LongPrompt mode) { long_prompt_ = mode; }
  LongPrompt long_prompt() const { return long_prompt_; }
  GenerationResult generate(const GenerationRequest& request, const StepCallback& on_step = {});

  // Mixed-prompt batching (pipeline_batch.cpp): why `b` cannot share the UNet
  // calls of generate_batch with `a`, or "" when it can. Requests share a
  // batch when they run the same schedule on the same latent shape with the
  // same guidance: size, steps, sampler, schedule, spacing, eta, guidance
  // scale and rescale, VAE tiling, txt2img or img2img of the same strength,
  // and the same text-context length (77 x the chunks of the longer of
  // prompt and negative prompt). Prompts, negative prompts, weights,
  // embeddings, clip skip, seeds, batch sizes and init images may differ.
  // Inpainting (a mask or an inpainting UNet) never batches.
  std::string batch_mismatch(const GenerationRequest& a, const GenerationRequest& b) const;
  // Several compatible requests (batch_mismatch "" for each against the
  // first) through one UNet call per step. Each request keeps its own text
  // conditioning, seeded Generator, noise and scheduler (so ancestral and
  // other noise-adding samplers draw from each request's own generator), and
  // result k is the one generate(requests[k]) gives: bit for bit on the CPU
  // (set_exact_cpu_batches), within fp16 rounding on CUDA. `on_step` sees the batch's
  // latents (all requests, in order). Timings are the batch's.
  std::vector<GenerationResult> generate_batch(const std::vector<GenerationRequest>& requests,
                                               const StepCallback& on_step = {});
  // On the CPU generate_batch runs each request's UNet call and VAE decode
  // on its own rows, bit for bit as alone (the CPU's matrix products round a
  // row by its place in the product); false batches them in one call as on
  // CUDA: faster where batching pays, within float rounding of alone.
  void set_exact_cpu_batches(bool exact) { exact_cpu_batches_ = exact; }
  // The embeddings each request of the last generate_batch used, in order.
  const std::vector<std::vector<std::string>>& batch_embeddings_used() const {
    return batch_embeddings_used_;
  }

  // Textual-inversion embeddings a prompt may name (A1111: the file name as a
  // word; its vectors take as many token places); replaces the previous set.
  void set_embeddings(std::vector<TextualInversion> embeddings);
  // The names of the embeddings the last encode (generate) used, in order.
  const std::vector<std::string>& embeddings_used() const { return embeddings_used_; }

  // The scheduler a request runs with (sampler, schedule type, DDIM eta), timesteps set.
  std::unique_ptr<Scheduler> make_request_scheduler(const GenerationRequest& request) const;
  // uint8 [H, W, 3] -> [1, 3, height, width] in [-1, 1] on the model's device and
  // dtype (diffusers' VaeImageProcessor.preprocess); resized when the size differs.
  torch::Tensor preprocess_image(const torch::Tensor& image, int height, int width) const;
  // True once a VAE decode overflowed the model's fp16/bf16 VAE: this
  // pipeline then decodes (and encodes init images) with its own fp32 copy.
  bool vae_fp32_fallback() const { return vae_fp32_fallback_; }

 private:
  // The guided UNet step for the current latents; replays a captured CUDA
  // graph when the model runs on CUDA with graphs enabled.
  // `added`: SDXL's addition embedding rows for the UNet batch (undefined otherwise).
  // `splits`: the images of each request in a mixed batch (generate_batch);
  // the eager path combines guidance per request, as each would alone.
  torch::Tensor guided_noise(const torch::Tensor& latents, double t, const torch::Tensor& context,
                             const torch::Tensor& added, const GenerationRequest& request,
                             const std::vector<int64_t>& splits = {});
  // One request's text conditioning: context rows [uncond x batch, cond x
  // batch] (cond only without guidance) and SDXL's addition embedding rows
  // in the same order (undefined otherwise).
  struct Conditioning {
    torch::Tensor context, added;
  };
  Conditioning encode_conditioning(const GenerationRequest& request);
  // img2img: the first timestep index to run (sets the scheduler's begin
  // index); 0 for txt2img.
  size_t first_step_index(const GenerationRequest& request, Scheduler& scheduler) const;
  // txt2img / img2img (no mask) starting latents, drawn in diffusers' order.
  torch::Tensor initial_latents(const GenerationRequest& request, Scheduler& scheduler,
                                Generator& generator, size_t first_step);
  // VAE decode of final latents, in the VAE's dtype; an fp16/bf16 decode that
  // overflows is redone in fp32 with a warning, and this pipeline keeps an
  // fp32 copy of the VAE for later decodes (the model's VAE is left as is).
  torch::Tensor decode_latents(const torch::Tensor& latents, bool tiled);
  void synchronize() const;  // waits for the model's device (no-op on the CPU)
  // diffusers' _encode_vae_image: a sample of the VAE posterior of `image`
  // ([1, 3, H, W] in [-1, 1]; one randn draw from `generator`) times the
  // scaling factor, in the model's dtype.
  torch::Tensor sample_image_latents(const torch::Tensor& image, Generator& generator);
  // Throws Error naming the step, sampler and dtype when `latents` hold NaN/Inf
  // (on CUDA checked every few steps only, to avoid a device sync per step).
  void check_finite_latents(const torch::Tensor& latents, int step, int total,
                            const std::string& sampler) const;

  const StableDiffusionModel& model_;
  // Handles to the model's modules (shared, not copied): their forward passes
  // are non-const in libtorch; the pipeline never changes their parameters.
  CLIPTextModel text_encoder_;
  CLIPTextModel text_encoder_2_;  // SDXL, else null
  UNet2DConditionModel unet_;
  // The model's VAE, or after an fp16/bf16 overflow the pipeline's fp32 copy.
  AutoencoderKL vae_;
  torch::ScalarType vae_dtype_;
  bool vae_fp32_fallback_ = false;
  bool exact_cpu_batches_ = true;
  LongPrompt long_prompt_ = LongPrompt::chunks;
  struct EmbeddingEntry {
    TextualInversion embedding;
    std::vector<int64_t> name_ids, name_ids_2;  // the name as each tokenizer encodes it
  };
  std::vector<EmbeddingEntry> embeddings_;
  std::vector<std::string> embeddings_used_;
  std::vector<std::vector<std::string>> batch_embeddings_used_;
  std::unique_ptr<UNetGraph> graph_;
  bool graph_context_set_ = false;
  bool graphs_failed_ = false;
};

}  // namespace sdgen
