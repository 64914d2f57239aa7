// The diffusion stage of the training recipe (see train.h): text encoder and
// UNet trained together, its checkpoints, and its noise options.

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <future>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>

#include "sdgen/error.h"
#include "sdgen/schedulers/scheduler.h"
#include "synth/synth_world.h"
#include "train/train.h"
#include "train/trainer_common.h"

namespace sdgen::train {

namespace {

namespace fs = std::filesystem;

std::vector<torch::Tensor> trainable(torch::nn::Module& module) {
  std::vector<torch::Tensor> params;
  for (auto& p : module.parameters()) params.push_back(p);
  return params;
}

// Parameters in the order train_diffusion checkpoints them: text encoder, then UNet.
std::vector<torch::Tensor> diffusion_params(CLIPTextModel& text_encoder,
                                            UNet2DConditionModel& unet) {
  std::vector<torch::Tensor> params = trainable(*text_encoder);
  for (auto& p : trainable(*unet)) params.push_back(p);
  return params;
}

// Copies archive entries `prefix` + index into `tensors` (shapes must match).
void read_indexed(torch::serialize::InputArchive& archive, const std::string& prefix,
                  std::vector<torch::Tensor>& tensors, const std::string& path) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < tensors.size(); ++i) {
    torch::Tensor value;
    archive.read(prefix + std::to_string(i), value);
    if (!value.sizes().equals(tensors[i].sizes()))
      throw Error("training checkpoint does not match the architecture: " + path);
    tensors[i].copy_(value);
  }
}

// A chance option (`name` its DiffusionTrainOptions field) must lie in [0, 1].
void check_chance(const char* name, double chance) {
  if (!(chance >= 0 && chance <= 1))
    throw Error(std::string(name) + " must be in [0, 1], not " + std::to_string(chance));
}

void check_pyramid_discount(double discount) {
  if (!(discount >= 0 && discount < 1))
    throw Error("pyramid_noise must be in [0, 1), not " + std::to_string(discount));
}

// A train_diffusion checkpoint, read whole, its tensors put on `device`
// (whichever device it was written from); throws when there is none.
torch::serialize::InputArchive open_checkpoint(const std::string& checkpoint,
                                               const torch::Device& device = torch::kCPU) {
  if (!fs::exists(checkpoint)) throw Error("no training checkpoint: " + checkpoint);
  torch::serialize::InputArchive archive;
  archive.load_from(checkpoint, device);
  return archive;
}

int checkpoint_step(torch::serialize::InputArchive& archive) {
  torch::Tensor step;
  archive.read("step", step);
  return static_cast<int>(step.item<int64_t>());
}

}  // namespace

SchedulerConfig trained_scheduler_config(const DiffusionTrainOptions& options) {
  if (options.prediction_type != "epsilon" && options.prediction_type != "v_prediction")
    throw Error("prediction_type must be epsilon or v_prediction, not '" + options.prediction_type +
                "'");
  if (options.zero_terminal_snr && options.prediction_type != "v_prediction")
    throw Error(
        "zero terminal SNR needs v_prediction (epsilon cannot be predicted from pure noise)");
  SchedulerConfig config;  // SD1.5's DDIM config: scaled_linear 0.00085 - 0.012, 1000 steps
  config.class_name = "DDIMScheduler";
  config.prediction_type = options.prediction_type;
  config.rescale_betas_zero_snr = options.zero_terminal_snr;
  // Lin et al. 2023 (diffusers' DDIMScheduler docs): with zero terminal SNR
  // sample from t = 999, where the model learnt to start.
  if (options.zero_terminal_snr) config.timestep_spacing = "trailing";
  return config;
}

torch::Tensor bias_to_high_noise(const torch::Tensor& t, int64_t timesteps, double share,
                                 c10::optional<at::Generator> generator) {
  check_chance("high_noise_share", share);
  if (share == 0) return t;
  const auto high = torch::randint(timesteps / 2, timesteps, t.sizes(), generator, torch::kInt64);
  return torch::where(torch::rand(t.sizes(), generator) < share, high, t);
}

torch::Tensor add_pyramid_noise(const torch::Tensor& noise, double discount,
                                c10::optional<at::Generator> generator) {
  check_pyramid_discount(discount);
  if (discount == 0) return noise;
  const int64_t h = noise.size(2), w = noise.size(3);
  auto out = noise.clone();
  double weight = 1;
  for (int64_t scale = 2; h / scale >= 1 && w / scale >= 1; scale *= 2) {
    weight *= discount;
    const auto coarse =
        torch::randn({noise.size(0), noise.size(1), h / scale, w / scale}, generator);
    namespace F = torch::nn::functional;
    out += weight * F::interpolate(coarse, F::InterpolateFuncOptions()
                                               .size(std::vector<int64_t>{h, w})
                                               .mode(torch::kBilinear)
                                               .align_corners(false));
  }
  return out * (noise.std() / out.std());
}

void train_diffusion(CLIPTextModel& text_encoder, UNet2DConditionModel& unet,
                     const Tokenizer& tokenizer, const LatentSet& data, double scaling_factor,
                     const DiffusionTrainOptions& options, const LogFn& log) {
  const int64_t n = data.latents.size(0);
  if (n == 0 || static_cast<size_t>(n) != data.captions.size()) {
    throw Error("train_diffusion: empty training set or captions/latents mismatch");
  }
  check_chance("high_noise_share", options.high_noise_share);  // before any work
  check_pyramid_discount(options.pyramid_noise);
  check_chance("swap_pairs", options.swap_pairs);
  const auto schedule = trained_scheduler_config(options);  // checks the prediction type
  const bool v_prediction = options.prediction_type == "v_prediction";
  auto fits = [&](const std::string& caption) {
    return tokenizer.encode(caption).size() + 2 <= static_cast<size_t>(tokenizer.max_length());
  };
  // Token rows of every caption (and of it said the other way round, or again
  // itself) and of the empty (unconditional) prompt.
  std::vector<int64_t> rows, reversed_rows;
  for (const auto& caption : data.captions) {
    // A caption cut short would teach the model a wrong picture for it.
    if (!fits(caption))
      throw Error("train_diffusion: \"" + caption + "\" is " +
                  std::to_string(tokenizer.encode(caption).size() + 2) +
                  " tokens with bos and eos, more than the tokenizer's model_max_length " +
                  std::to_string(tokenizer.max_length()));
    const auto ids = tokenizer.encode_padded(caption);
    rows.insert(rows.end(), ids.begin(), ids.end());
    if (options.swap_pairs > 0) {
      std::string other = caption;
      const auto spec = synth::parse_caption(caption);
      if (spec && spec->objects.size() == 2) {
        const auto reversed = synth::reversed_pair(*spec);
        auto text = reversed.caption();
        if (!synth::is_held_out(reversed) && fits(text)) other = std::move(text);
      }
      const auto other_ids = tokenizer.encode_padded(other);
      reversed_rows.insert(reversed_rows.end(), other_ids.begin(), other_ids.end());
    }
  }
  const int64_t length = tokenizer.max_length();
  const auto tokens = torch::tensor(rows, torch::kInt64).view({n, length});
  const auto reversed_tokens = options.swap_pairs > 0
                                   ? torch::tensor(reversed_rows, torch::kInt64).view({n, length})
                                   : tokens;
  const auto empty = torch::tensor(tokenizer.encode_padded(""), torch::kInt64).view({1, length});

  // q(x_t | x_0) of the SD schedule (diffusers DDPMScheduler.add_noise).
  const auto alphas_cumprod =
      make_scheduler("ddpm", schedule)->alphas_cumprod_tensor().to(torch::kFloat32);
  const int64_t timesteps = alphas_cumprod.size(0);

  // Randomness is drawn on the CPU whatever the device (the same batches, noise
  // and timesteps as a CPU run); the modules, optimizer and EMA live on it.
  const torch::Device device = options.device;
  OnDevice on_device({text_encoder.ptr().get(), unet.ptr().get()}, device);
  std::vector<torch::Tensor> params = diffusion_params(text_encoder, unet);
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(options.lr).weight_decay(0.01));
  std::vector<torch::Tensor> ema;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : params) ema.push_back(p.detach().clone());
  }
  auto generator_seed = options.seed;
  int start_step = 0;
  if (!options.checkpoint.empty() && fs::exists(options.checkpoint)) {
    auto archive = open_checkpoint(options.checkpoint, device);
    start_step = checkpoint_step(archive);
    read_indexed(archive, "param.", params, options.checkpoint);
    read_indexed(archive, "ema.", ema, options.checkpoint);
    torch::serialize::InputArchive optimizer_archive;
    archive.read("optimizer", optimizer_archive);
    optimizer.load(optimizer_archive);
  }
  // Already stopped there or later (a re-run of an interrupted recipe, or of
  // an earlier run of one): nothing to do.
  if (options.stop_after > 0 && start_step >= options.stop_after) return;
  if (start_step > options.steps)
    throw Error("train_diffusion: the checkpoint is past the last step (" +
                std::to_string(start_step) + " > " + std::to_string(options.steps) + ")");
  auto save_checkpoint = [&](int step) {
    torch::serialize::OutputArchive archive;
    archive.write("step", torch::tensor(static_cast<int64_t>(step)));
    for (size_t i = 0; i < params.size(); ++i) {
      archive.write("param." + std::to_string(i), params[i].detach());
      archive.write("ema." + std::to_string(i), ema[i]);
    }
    torch::serialize::OutputArchive optimizer_archive;
    optimizer.save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
    const auto temp = options.checkpoint + ".tmp";
    archive.save_to(temp);
    fs::rename(temp, options.checkpoint);
  };

  text_encoder->train();
  unet->train();
  double window = 0;
  int window_steps = 0;
  // A step's batch: everything drawn at random, on the CPU, from a generator
  // seeded by (seed, step), so that a resumed run draws what an uninterrupted
  // one would have (the same draws as torch's global generator seeded so,
  // which earlier runs used).
  struct Batch {
    torch::Tensor x0, ids, t, noise, a;
  };
  auto draw = [&](int step) {
    auto generator = at::make_generator<at::CPUGeneratorImpl>(generator_seed * 1000003 +
                                                              static_cast<uint64_t>(step));
    Batch b;
    const auto index = torch::randint(0, n, {options.batch}, generator, torch::kInt64);
    b.x0 = data.latents.index_select(0, index) * scaling_factor;
    b.ids = tokens.index_select(0, index);
    const auto drop = torch::rand({options.batch}, generator) < options.caption_dropout;
    b.t = torch::randint(0, timesteps, {options.batch}, generator, torch::kInt64);
    b.noise = torch::randn(b.x0.sizes(), generator);
    if (options.noise_offset > 0) {
      b.noise = b.noise +
                options.noise_offset * torch::randn({b.x0.size(0), b.x0.size(1), 1, 1}, generator);
    }
    // Drawn after the rest, so that 0 (off) draws what earlier runs drew.
    b.t = bias_to_high_noise(b.t, timesteps, options.high_noise_share, generator);
    b.noise = add_pyramid_noise(b.noise, options.pyramid_noise, generator);
    if (options.swap_pairs > 0) {  // drawn last too
      const auto swap = torch::rand({options.batch}, generator) < options.swap_pairs;
      b.ids = torch::where(swap.unsqueeze(1), reversed_tokens.index_select(0, index), b.ids);
    }
    b.ids = torch::where(drop.unsqueeze(1), empty.expand({options.batch, length}), b.ids);
    b.a = alphas_cumprod.index_select(0, b.t).view({-1, 1, 1, 1});
    return b;
  };
  // On a GPU the next step's batch is drawn while this one trains.
  const bool prefetch = device.is_cuda();
  std::future<Batch> next;
  for (int step = start_step; step < options.steps; ++step) {
    set_lr(optimizer, scheduled_lr(options.lr, step, options.warmup, options.steps));
    Batch batch = next.valid() ? next.get() : draw(step);
    if (prefetch && step + 1 < options.steps) next = std::async(std::launch::async, draw, step + 1);
    // The noised latents, target and loss where the modules are.
    const auto x0 = batch.x0.to(device), noise = batch.noise.to(device), a = batch.a.to(device);
    const auto xt = a.sqrt() * x0 + (1 - a).sqrt() * noise;

    torch::Tensor prediction;
    {
      AutocastBf16 autocast(options.bf16, device);
      const auto context = text_encoder->forward(batch.ids.to(device)).hidden;
      prediction = unet->forward(xt, batch.t.to(device), context).to(torch::kFloat32);
    }
    // diffusers DDPMScheduler.get_velocity for v.
    const auto target = v_prediction ? a.sqrt() * noise - (1 - a).sqrt() * x0 : noise;
    auto per_sample = (prediction - target).pow(2).mean({1, 2, 3});
    if (options.min_snr_gamma > 0) {
      // min-SNR-gamma weighting (Hang et al. 2023): x_0's error weighed by
      // min(SNR, gamma), i.e. epsilon's loss by min(SNR, gamma) / SNR. For v,
      // whose loss is x_0's error times SNR + 1, min(SNR + 1, gamma) / (SNR + 1):
      // bounded below by 1 so that the pure-noise end (SNR 0), where the layout
      // is decided, is not weighed away.
      const auto snr = a.view({-1}) / (1 - a.view({-1}));
      if (v_prediction) {
        per_sample = per_sample * torch::clamp_max(snr + 1, options.min_snr_gamma) / (snr + 1);
      } else {
        per_sample = per_sample * torch::clamp_max(snr, options.min_snr_gamma) / snr;
      }
    }
    const auto loss = per_sample.mean();
    optimizer.zero_grad();
    loss.backward();
    // Multi-tensor forms on every device: on a GPU the per-parameter launches
    // of clipping, AdamW and the EMA took most of a step; on the CPU they
    // compute what clip_grad_norm_, AdamW::step and the per-parameter EMA of
    // earlier runs did, bit for bit (checkpoints of a 30-step run identical).
    clip_grad_norm_multi_tensor(params, 1.0);
    adamw_step_multi_tensor(optimizer);
    // Early on the average follows the weights closely (diffusers EMAModel's warm-up).
    ema_update_multi_tensor(ema, params, std::min(options.ema_decay, (1.0 + step) / (10.0 + step)));
    window += loss.item<double>();
    ++window_steps;
    if ((step + 1) % options.log_every == 0 || step + 1 == options.steps) {
      if (log) log(step + 1, window / window_steps);
      window = 0;
      window_steps = 0;
    }
    const bool stopping = options.stop_after > 0 && step + 1 >= options.stop_after;
    if (!options.checkpoint.empty() && ((step + 1) % options.checkpoint_every == 0 || stopping)) {
      save_checkpoint(step + 1);
    }
    if (stopping) return;
  }
  if (!options.checkpoint.empty()) save_checkpoint(options.steps);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(ema[i]);
  text_encoder->eval();
  unet->eval();
}

int diffusion_checkpoint_step(const std::string& checkpoint) {
  auto archive = open_checkpoint(checkpoint);
  return checkpoint_step(archive);
}

int load_diffusion_checkpoint(CLIPTextModel& text_encoder, UNet2DConditionModel& unet,
                              const std::string& checkpoint, bool ema) {
  auto archive = open_checkpoint(checkpoint);
  std::vector<torch::Tensor> params = diffusion_params(text_encoder, unet);
  read_indexed(archive, ema ? "ema." : "param.", params, checkpoint);
  text_encoder->eval();
  unet->eval();
  return checkpoint_step(archive);
}

}  // namespace sdgen::train
