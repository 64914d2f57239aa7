#pragma once

// Training sdgen's own small latent-diffusion model on the synthetic world
// (synth_world.h) with libtorch autograd, using the very module classes that
// inference loads (CLIPTextModel, UNet2DConditionModel, AutoencoderKL).
//
// Recipe (as Stable Diffusion was trained, scaled down):
//   1. the KL-VAE alone on crops of renders (L1 + L2 reconstruction + a small KL term);
//   2. the training set encoded once with the frozen VAE (posterior means) and the
//      latent scaling factor measured (1 / std, as SD's 0.18215 was chosen);
//   3. text encoder + UNet together, epsilon prediction on the SD scaled-linear
//      schedule (or v prediction on it rescaled to zero terminal SNR), captions dropped 10% of the
//      time for classifier-free guidance, min-SNR loss weighting, EMA of the weights.
// tools/sdgen_train.cpp drives it; scripts/train-default-model.sh reproduces models/default.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sdgen/config.h"
#include "sdgen/text_encoder.h"
#include "sdgen/tokenizer.h"
#include "sdgen/unet.h"
#include "sdgen/vae.h"
#include "synth/synth_world.h"

namespace sdgen::train {

// The default model's architecture: SD1.x block types with few channels.
struct DemoArchitecture {
  CLIPTextConfig text;
  UNetConfig unet;
  VAEConfig vae;
};
// The sizes an experiment may change (the shipped model has the defaults).
struct DemoSizes {
  int text_layers = 2;       // text transformer layers
  int text_width = 64;       // text hidden size (= the UNet's cross_attention_dim), 4 heads
  int attention_levels = 2;  // coarsest UNet levels with cross-attention (of 4)
  nlohmann::json to_json() const;
  // Missing keys keep their defaults; unknown keys and bad values throw.
  static DemoSizes from_json(const nlohmann::json& j);
  void validate() const;  // throws sdgen::Error
};
// `vocab_size` and the special ids come from the trained tokenizer.
DemoArchitecture demo_architecture(int vocab_size, int bos_id, int eos_id, int pad_id,
                                   const DemoSizes& sizes = {});

// uint8 [N, H, W, 3] pictures -> float [N, 3, H, W] in [-1, 1] (the VAE's input).
torch::Tensor to_model_input(const torch::Tensor& images);

// Called every `log_every` steps with the step (1-based) and the mean loss since the last call.
using LogFn = std::function<void(int step, double loss)>;

struct VAETrainOptions {
  int steps = 1500;
  int batch = 16;
  int crop = 64;   // training crops (pixels); the VAE is convolutional
  int pool = 256;  // 512x512 renders crops are cut from
  double lr = 1e-3;
  double kl_weight = 1e-6;
  // Second stage: only the decoder (and post_quant_conv) learns, the encoder
  // is frozen, so latents encoded before stay valid.
  bool decoder_only = false;
  bool bf16 = false;  // forward and backward under CPU autocast to bf16
  uint64_t seed = 0;
  int log_every = 50;
};
// Trains `vae` in place (fp32, CPU); returns the mean loss of the last log window.
double train_vae(AutoencoderKL& vae, const VAETrainOptions& options, const LogFn& log = {});

struct LatentSet {
  torch::Tensor latents;  // [N, C, 64, 64] float32, posterior means (unscaled)
  std::vector<std::string> captions;
};
// Renders `count` training scenes (synth::random_spec, never held-out pairs) at
// `canvas` pixels, pairs placed by `layout`, and encodes them with `vae` (fp32)
// on `device`; the latents are on the CPU, `vae` back on it at the end.
LatentSet encode_training_set(AutoencoderKL& vae, int count, int canvas, uint64_t seed,
                              const std::function<void(int done)>& progress = {},
                              synth::PairLayout layout = synth::PairLayout::kFree,
                              const torch::Device& device = torch::kCPU);
// 1 / std of the latents (how SD's scaling_factor was chosen).
double latent_scaling_factor(const torch::Tensor& latents);

struct DiffusionTrainOptions {
  int steps = 4000;
  int batch = 16;
  double lr = 5e-4;
  int warmup = 200;
  double caption_dropout = 0.1;  // captions replaced by "" (the unconditional prompt)
  double ema_decay = 0.999;
  double min_snr_gamma = 5.0;  // Hang et al. 2023; 0 = plain MSE
  // "Offset noise" (Guttenberg 2023): noise + offset * N(0, 1) per sample and
  // channel. SD's schedule leaves 7% of the signal at t = 999, so without it
  // the model reads the picture's mean (the background) from x_t instead of
  // the caption, and pure noise (mean 0) always gives a gray background.
  double noise_offset = 0.0;
  // Share of each batch whose timestep is drawn from the noisier half of the
  // schedule (t >= 500) instead of all of it; 0 = uniform t. Where a shape
  // goes and how big it is is decided at high noise, where the epsilon loss
  // carries little of the picture (x_0's error is scaled by the SNR there).
  double high_noise_share = 0.0;
  // Multi-resolution ("pyramid") noise, Whitaker 2023: the noise plus noise
  // drawn at 1/2, 1/4, ... of the latent's size, upsampled, weighted by
  // discount^level, then rescaled to unit variance; 0 = off. SD's schedule
  // leaves a shape's coarse outline readable in x_t even at t = 999, so the
  // model learns to take a shape's place from the noise, not the caption
  // (offset noise is the same fix for the picture's mean only).
  double pyramid_noise = 0.0;
  // Chance that a two-shape caption is said the other way round at a step
  // ("a above b" as "b below a", synth::reversed_pair) for the same latents;
  // never when the reversed caption is a held-out one; 0 = off. The model
  // then has to read the relation word to tell the two orders apart.
  double swap_pairs = 0.0;
  // What the UNet predicts: "epsilon" (SD1.x) or "v_prediction" (SD2.x:
  // v = sqrt(a) * noise - sqrt(1 - a) * x_0, diffusers get_velocity). With v
  // the min-SNR weight is min(SNR + 1, gamma) / (SNR + 1): x_0's error weighs
  // at least 1 at every timestep, where epsilon's weighs SNR (0.005 at t = 999).
  std::string prediction_type = "epsilon";
  // SD's schedule rescaled to zero SNR at its last step (Lin et al. 2023,
  // diffusers rescale_zero_terminal_snr), so x_999 holds no trace of x_0 and
  // the layout must come from the caption, as it does from pure noise at
  // inference. Needs v_prediction (epsilon is undefined at SNR 0).
  bool zero_terminal_snr = false;
  uint64_t seed = 0;
  int log_every = 50;
  // Resumable training: state saved to `checkpoint` every `checkpoint_every`
  // steps, and resumed from it when it exists ("" = no checkpoints).
  std::string checkpoint;
  int checkpoint_every = 250;
  // Stop after this step (0 = run all `steps`), as an interruption would;
  // the modules then keep the live (not EMA) weights. For tests.
  int stop_after = 0;
  // Forward and backward under autocast to bf16 (weights, optimizer and EMA
  // stay fp32). About 2x faster on CPUs with native bf16; emulated (slower
  // than fp32) on other CPUs.
  bool bf16 = false;
  // Where the text encoder, UNet, optimizer and EMA live while training (the
  // modules are moved there and back to the CPU at the end). Batches, noise
  // and timesteps are drawn on the CPU, so a run draws the same on any device;
  // checkpoints load on any device.
  torch::Device device = torch::kCPU;
};

// The training schedule of `options` (SD1.5's, rescaled to zero terminal SNR
// when asked) as the DDIM scheduler config a model folder carries: its
// prediction type, and "trailing" timesteps with zero terminal SNR (so that
// sampling starts at t = 999, Lin et al. 2023). Throws on a bad prediction type
// or zero terminal SNR with epsilon.
SchedulerConfig trained_scheduler_config(const DiffusionTrainOptions& options);

// Timesteps `t` (drawn uniformly from [0, timesteps)) with a `share` of them
// redrawn uniformly from the noisier half, [timesteps / 2, timesteps), using
// `generator` (torch's global generator when not given); `t` itself when share
// is 0. Throws unless share is in [0, 1]. (DiffusionTrainOptions::high_noise_share.)
torch::Tensor bias_to_high_noise(const torch::Tensor& t, int64_t timesteps, double share,
                                 c10::optional<at::Generator> generator = {});

// `noise` (N, C, H, W) plus the multi-resolution noise of
// DiffusionTrainOptions::pyramid_noise with that discount, drawn with
// `generator` (torch's global generator when not given), rescaled to the
// standard deviation of `noise`; `noise` itself when discount is 0. Throws
// unless discount is in [0, 1).
torch::Tensor add_pyramid_noise(const torch::Tensor& noise, double discount,
                                c10::optional<at::Generator> generator = {});

// Multi-tensor (torch::_foreach_*) forms of a training step's bookkeeping,
// which train_diffusion uses: on a GPU one kernel launch per operation over all
// the parameters instead of one per parameter (the per-parameter launches of
// AdamW, clipping and the EMA took most of a step of the small default model).
// Each computes what its per-parameter form computes, in the same order (on the
// CPU, where the _foreach ops run tensor by tensor, bit for bit).
//
// torch::optim::AdamW::step() for an optimizer whose groups have no amsgrad,
// its state (created as AdamW creates it, zeros) kept in the optimizer, so that
// it saves, loads and continues with either form.
void adamw_step_multi_tensor(torch::optim::AdamW& optimizer);
// torch::nn::utils::clip_grad_norm_(params, max_norm) (2-norm); returns the
// total norm before clipping.
double clip_grad_norm_multi_tensor(const std::vector<torch::Tensor>& params, double max_norm);
// ema = decay * ema + (1 - decay) * params, tensor by tensor.
void ema_update_multi_tensor(std::vector<torch::Tensor>& ema,
                             const std::vector<torch::Tensor>& params, double decay);

// Trains `text_encoder` and `unet` together on `data` (latents multiplied by
// `scaling_factor`); on return the modules hold the EMA weights.
void train_diffusion(CLIPTextModel& text_encoder, UNet2DConditionModel& unet,
                     const Tokenizer& tokenizer, const LatentSet& data, double scaling_factor,
                     const DiffusionTrainOptions& options, const LogFn& log = {});

// The step a train_diffusion checkpoint was saved at (its run's last step when
// the run finished).
int diffusion_checkpoint_step(const std::string& checkpoint);

// Loads the weights of a train_diffusion checkpoint into the modules: the EMA
// (what training returns at the end) or the live weights. Returns the step.
int load_diffusion_checkpoint(CLIPTextModel& text_encoder, UNet2DConditionModel& unet,
                              const std::string& checkpoint, bool ema = true);

// A model folder in the diffusers layout (what write_model_folder writes and
// sdgen loads) opened for more training: its configs, its tokenizer and fp32
// modules holding its weights. The latent scaling factor is the folder's
// (vae/config.json), the one its UNet learnt with.
struct TrainableModel {
  DemoArchitecture arch;
  std::string tokenizer_dir;  // the folder's tokenizer/, copied by write_model_folder
  std::unique_ptr<Tokenizer> tokenizer;
  CLIPTextModel text_encoder{nullptr};
  UNet2DConditionModel unet{nullptr};
  AutoencoderKL vae{nullptr};
  // scheduler/scheduler_config.json (SD1.5's DDIM config when the file is
  // missing): the prediction type and schedule the UNet learnt.
  SchedulerConfig scheduler;
};
// Throws sdgen::Error naming the file at fault (missing config or weights,
// weights that do not fit the configs).
TrainableModel load_trainable_model(const std::string& dir);

// Writes `text` to `path` atomically (temporary file + rename), creating its folder.
void write_text_file(const std::string& path, const std::string& text);

// Writes the diffusers folder sdgen loads: fp16 weights, the configs of
// `arch`, `scheduler` (the schedule the model trained on; SD1.5's DDIM config by
// default), the files of `tokenizer_dir` and model_index.json. Each file is
// written atomically (temporary file + rename).
void write_model_folder(const std::string& out, const DemoArchitecture& arch,
                        CLIPTextModel& text_encoder, UNet2DConditionModel& unet, AutoencoderKL& vae,
                        const std::string& tokenizer_dir,
                        const SchedulerConfig& scheduler = SchedulerConfig{});

}  // namespace sdgen::train
