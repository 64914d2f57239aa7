// The training recipe of sdgen's default model (see train.h).

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <future>
#include <random>
#include <sstream>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "sdgen/error.h"
#include "sdgen/schedulers/scheduler.h"
#include "synth/synth_world.h"
#include "train/train.h"

namespace sdgen::train {

namespace {

namespace fs = std::filesystem;

// Learning rate: linear warm-up, then cosine decay to 10% (per step).
double scheduled_lr(double base, int step, int warmup, int total) {
  if (step < warmup) return base * (step + 1) / warmup;
  const double progress = static_cast<double>(step - warmup) / std::max(1, total - warmup);
  return base * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(3.14159265358979323846 * progress)));
}

void set_lr(torch::optim::AdamW& optimizer, double lr) {
  for (auto& group : optimizer.param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
}

// Autocast to bf16 on the CPU or a CUDA device for the lifetime of the guard
// (thread-local in libtorch).
class AutocastBf16 {
 public:
  AutocastBf16(bool enabled, const torch::Device& device)
      : enabled_(enabled), cuda_(device.is_cuda()) {
    set(true);
  }
  ~AutocastBf16() {
    set(false);
    if (enabled_) at::autocast::clear_cache();
  }
  AutocastBf16(const AutocastBf16&) = delete;
  AutocastBf16& operator=(const AutocastBf16&) = delete;

 private:
  void set(bool on) const {
    if (!enabled_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    const auto type = cuda_ ? at::kCUDA : at::kCPU;
    if (on) at::autocast::set_autocast_dtype(type, at::kBFloat16);
    at::autocast::set_autocast_enabled(type, on);
#else
    if (cuda_) {
      if (on) at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
      at::autocast::set_enabled(on);
    } else {
      if (on) at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
      at::autocast::set_cpu_enabled(on);
    }
#endif
  }
  bool enabled_;
  bool cuda_;
};

// Moves modules to a device for the lifetime of the guard, and back to the
// CPU (where callers write and evaluate them) at its end, also on a throw.
class OnDevice {
 public:
  OnDevice(std::vector<torch::nn::Module*> modules, const torch::Device& device)
      : modules_(std::move(modules)), moved_(!device.is_cpu()) {
    if (moved_)
      for (auto* m : modules_) m->to(device);
  }
  ~OnDevice() {
    if (moved_)
      for (auto* m : modules_) m->to(torch::kCPU);
  }
  OnDevice(const OnDevice&) = delete;
  OnDevice& operator=(const OnDevice&) = delete;

 private:
  std::vector<torch::nn::Module*> modules_;
  bool moved_;
};

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

}  // namespace

torch::Tensor to_model_input(const torch::Tensor& images) {
  return images.permute({0, 3, 1, 2}).to(torch::kFloat32).div(127.5).sub(1.0).contiguous();
}

nlohmann::json DemoSizes::to_json() const {
  return {{"text_layers", text_layers},
          {"text_width", text_width},
          {"attention_levels", attention_levels}};
}

DemoSizes DemoSizes::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw Error("architecture sizes: not a JSON object");
  DemoSizes sizes;
  for (const auto& [key, value] : j.items()) {
    int* field = key == "text_layers"        ? &sizes.text_layers
                 : key == "text_width"       ? &sizes.text_width
                 : key == "attention_levels" ? &sizes.attention_levels
                                             : nullptr;
    if (!field) throw Error("architecture sizes: unknown key \"" + key + "\"");
    if (!value.is_number_integer())
      throw Error("architecture sizes: " + key + " is not an integer");
    *field = value.get<int>();
  }
  sizes.validate();
  return sizes;
}

void DemoSizes::validate() const {
  if (text_layers < 1 || text_layers > 12)
    throw Error("text_layers must be 1-12, got " + std::to_string(text_layers));
  if (text_width < 16 || text_width > 512 || text_width % 4 != 0)
    throw Error("text_width must be a multiple of 4 in 16-512, got " + std::to_string(text_width));
  if (attention_levels < 1 || attention_levels > 4)
    throw Error("attention_levels must be 1-4, got " + std::to_string(attention_levels));
}

DemoArchitecture demo_architecture(int vocab_size, int bos_id, int eos_id, int pad_id,
                                   const DemoSizes& sizes) {
  sizes.validate();
  DemoArchitecture a;
  a.text.vocab_size = vocab_size;
  a.text.hidden_size = sizes.text_width;
  a.text.intermediate_size = 4 * sizes.text_width;
  a.text.num_hidden_layers = sizes.text_layers;
  a.text.num_attention_heads = 4;
  a.text.max_position_embeddings = 77;
  a.text.projection_dim = sizes.text_width;
  a.text.bos_token_id = bos_id;
  a.text.eos_token_id = eos_id;
  a.text.pad_token_id = pad_id;

  // Cross-attention at the coarsest levels (by default two: 16x16 and 8x8
  // latents, where shapes, colours and places are decided); plain ResNet
  // levels above them.
  a.unet.block_out_channels = {16, 32, 64, 128};
  const int levels = static_cast<int>(a.unet.block_out_channels.size());
  a.unet.down_block_types.clear();
  a.unet.up_block_types.clear();
  for (int i = 0; i < levels; ++i) {
    const bool attention = i >= levels - sizes.attention_levels;
    a.unet.down_block_types.push_back(attention ? "CrossAttnDownBlock2D" : "DownBlock2D");
    a.unet.up_block_types.insert(a.unet.up_block_types.begin(),
                                 attention ? "CrossAttnUpBlock2D" : "UpBlock2D");
  }
  a.unet.layers_per_block = 1;
  a.unet.attention_head_dim = {4, 4, 4, 4};
  a.unet.transformer_layers_per_block = {1, 1, 1, 1};
  a.unet.cross_attention_dim = sizes.text_width;
  a.unet.norm_num_groups = 8;
  a.unet.sample_size = 64;

  a.vae.block_out_channels = {16, 32, 64, 64};
  a.vae.layers_per_block = 1;
  a.vae.norm_num_groups = 8;
  a.vae.mid_block_add_attention = false;
  a.vae.sample_size = 512;
  return a;
}

double train_vae(AutoencoderKL& vae, const VAETrainOptions& options, const LogFn& log) {
  if (options.steps <= 0 || options.batch <= 0 || options.pool <= 0 || options.crop % 8 != 0) {
    throw Error("train_vae: steps, batch and pool must be positive, crop a multiple of 8");
  }
  constexpr int kCanvas = 512;
  std::mt19937_64 rng(options.seed);
  // The pool of full renders crops are cut from (objects kept for crop centres).
  std::vector<synth::Scene> scenes;
  auto pool = torch::empty({options.pool, kCanvas, kCanvas, 3}, torch::kUInt8);
  for (int i = 0; i < options.pool; ++i) {
    scenes.push_back(synth::place_scene(synth::random_spec(rng), kCanvas, rng));
    pool[i].copy_(synth::render(scenes.back()));
  }
  torch::manual_seed(options.seed);
  vae->train();
  std::vector<torch::Tensor> params;
  for (auto& p : vae->named_parameters()) {
    const bool frozen = options.decoder_only &&
                        (p.key().rfind("encoder.", 0) == 0 || p.key().rfind("quant_conv.", 0) == 0);
    p.value().set_requires_grad(!frozen);
    if (!frozen) params.push_back(p.value());
  }
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(options.lr).weight_decay(0.0));
  const int crop = options.crop;
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  double window = 0, last = 0;
  int window_steps = 0;
  for (int step = 0; step < options.steps; ++step) {
    set_lr(optimizer, scheduled_lr(options.lr, step, 100, options.steps));
    auto batch = torch::empty({options.batch, crop, crop, 3}, torch::kUInt8);
    for (int b = 0; b < options.batch; ++b) {
      const int i = pick(0, options.pool - 1);
      int x = pick(0, kCanvas - crop), y = pick(0, kCanvas - crop);
      // Most crops on a shape's edge: flat background alone teaches little.
      if (pick(0, 9) < 5) {
        const auto& objects = scenes[i].objects;
        const auto& o = objects[pick(0, static_cast<int>(objects.size()) - 1)];
        const int jitter = static_cast<int>(o.radius);
        x = std::clamp(static_cast<int>(o.cx) - crop / 2 + pick(-jitter, jitter), 0,
                       kCanvas - crop);
        y = std::clamp(static_cast<int>(o.cy) - crop / 2 + pick(-jitter, jitter), 0,
                       kCanvas - crop);
      }
      batch[b].copy_(pool[i].narrow(0, y, crop).narrow(1, x, crop));
    }
    const auto x = to_model_input(batch);
    DiagonalGaussian posterior;
    torch::Tensor reconstruction;
    {
      AutocastBf16 autocast(options.bf16, torch::kCPU);
      if (options.decoder_only) {
        torch::NoGradGuard no_grad;
        posterior = vae->encode(x);
      } else {
        posterior = vae->encode(x);
      }
      posterior.mean = posterior.mean.to(torch::kFloat32);
      posterior.std = posterior.std.to(torch::kFloat32);
      posterior.logvar = posterior.logvar.to(torch::kFloat32);
      const auto z = posterior.mean + posterior.std * torch::randn_like(posterior.std);
      reconstruction = vae->decode(z).to(torch::kFloat32);
    }
    const auto diff = reconstruction - x;
    // KL(q || N(0, 1)) per latent element (diffusers DiagonalGaussianDistribution.kl).
    const auto kl = 0.5 * (posterior.mean.pow(2) + posterior.logvar.exp() - 1.0 - posterior.logvar)
                              .sum({1, 2, 3})
                              .mean();
    // The decoder stage cannot move the KL term (the encoder is frozen): it is
    // left out, so the logged loss is the reconstruction error alone.
    auto loss = diff.abs().mean() + diff.pow(2).mean();
    if (!options.decoder_only) loss = loss + options.kl_weight * kl;
    optimizer.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, 1.0);
    optimizer.step();
    window += loss.item<double>();
    ++window_steps;
    if ((step + 1) % options.log_every == 0 || step + 1 == options.steps) {
      last = window / window_steps;
      if (log) log(step + 1, last);
      window = 0;
      window_steps = 0;
    }
  }
  for (auto& p : vae->parameters()) p.set_requires_grad(true);
  vae->eval();
  return last;
}

LatentSet encode_training_set(AutoencoderKL& vae, int count, int canvas, uint64_t seed,
                              const std::function<void(int done)>& progress,
                              synth::PairLayout layout, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  OnDevice on_device({vae.ptr().get()}, device);
  vae->eval();
  std::mt19937_64 rng(seed);
  LatentSet set;
  // Every scene and caption first, in order (the same scenes whatever the
  // threads). The captions live as long as the set: drawn between the chunks'
  // large temporary buffers, which come from glibc's heap (init_cpu_runtime
  // raises its mmap threshold and never trims it), they could pin the holes
  // those buffers left, and the heap then grew by tens of MB per chunk (seen:
  // 24 GB after 3,200 scenes, the process killed; it depended on the heap's
  // layout, e.g. on the work folder's path).
  std::vector<synth::Scene> scenes;
  scenes.reserve(static_cast<size_t>(count));
  set.captions.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) {
    const auto spec = synth::random_spec(rng);
    set.captions.push_back(spec.caption());
    scenes.push_back(synth::place_scene(spec, canvas, rng, layout));
  }
  const int factor = vae->downsample_factor();
  set.latents = torch::empty(
      {count, vae->config().latent_channels, canvas / factor, canvas / factor}, torch::kFloat32);
  // Scenes rendered in parallel and encoded together. 8 on the CPU, whose
  // encodings (and so the runs replayed from them) would change in rounding
  // with the batch; a GPU's many cores take larger chunks.
  const int chunk = device.is_cuda() ? std::max(8, 4 * at::get_num_threads()) : 8;
  for (int start = 0; start < count; start += chunk) {
    const int n = std::min(chunk, count - start);
    auto images = torch::empty({n, canvas, canvas, 3}, torch::kUInt8);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) images[i].copy_(synth::render(scenes[start + i]));
    });
    // Converted where the VAE runs: on a GPU the bytes cross (a quarter of the
    // floats) and the CPU does not page in the floats' fresh buffers.
    set.latents.narrow(0, start, n).copy_(vae->encode(to_model_input(images.to(device))).mean);
    if (progress) progress(start + n);
  }
  return set;
}

double latent_scaling_factor(const torch::Tensor& latents) {
  return 1.0 / latents.to(torch::kFloat64).std().item<double>();
}

namespace {

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

namespace {

// The key of a parameter's state in a torch::optim optimizer: the address of its
// TensorImpl, printed (libtorch 1.x) or as is (2.x).
template <class Key>
Key optimizer_state_key(const torch::Tensor& p);

template <>
[[maybe_unused]] std::string optimizer_state_key<std::string>(const torch::Tensor& p) {
  std::ostringstream key;  // what c10::guts::to_string writes
  key << p.unsafeGetTensorImpl();
  return key.str();
}

template <>
[[maybe_unused]] void* optimizer_state_key<void*>(const torch::Tensor& p) {
  return p.unsafeGetTensorImpl();
}

}  // namespace

// Follows torch::optim::AdamW::step (torch/csrc/api/src/optim/adamw.cpp),
// operation for operation, with each operation applied to all the parameters at once.
void adamw_step_multi_tensor(torch::optim::AdamW& optimizer) {
  torch::NoGradGuard no_grad;
  auto& states = optimizer.state();
  using Key = typename std::decay_t<decltype(states)>::key_type;
  for (auto& group : optimizer.param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    if (options.amsgrad()) throw Error("adamw_step_multi_tensor: amsgrad is not supported");
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs;
    int64_t step = -1;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const auto key = optimizer_state_key<Key>(p);
      auto found = states.find(key);
      if (found == states.end()) {
        auto state = std::make_unique<torch::optim::AdamWParamState>();
        state->step(0);
        state->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        state->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        found = states.insert_or_assign(key, std::move(state)).first;
      }
      auto& state = static_cast<torch::optim::AdamWParamState&>(*found->second);
      state.step(state.step() + 1);
      if (step < 0) step = state.step();
      if (state.step() != step)
        throw Error("adamw_step_multi_tensor: parameters of a group at different steps");
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(state.exp_avg());
      exp_avg_sqs.push_back(state.exp_avg_sq());
    }
    if (params.empty()) continue;
    if (options.weight_decay() != 0)
      at::_foreach_mul_(params, 1 - options.lr() * options.weight_decay());
    const auto [beta1, beta2] = options.betas();
    const double bias_correction1 = 1 - std::pow(beta1, step);
    const double bias_correction2 = 1 - std::pow(beta2, step);
    at::_foreach_mul_(exp_avgs, beta1);
    at::_foreach_add_(exp_avgs, grads, 1 - beta1);
    at::_foreach_mul_(exp_avg_sqs, beta2);
    at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2);
    auto denom = at::_foreach_sqrt(exp_avg_sqs);
    at::_foreach_div_(denom, std::sqrt(bias_correction2));
    at::_foreach_add_(denom, options.eps());
    at::_foreach_addcdiv_(params, exp_avgs, denom, -options.lr() / bias_correction1);
  }
}

// Follows torch::nn::utils::clip_grad_norm_ (2-norm, no finiteness check).
double clip_grad_norm_multi_tensor(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return 0.0;
  const auto norms = at::_foreach_norm(grads, 2);
  const auto total = norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2);
  const double total_norm = total.item<double>();
  // clip_grad_norm_ multiplies by its clamped coefficient, a float tensor.
  const float coef = torch::clamp_max(max_norm / (total + 1e-6), 1.0).item<float>();
  at::_foreach_mul_(grads, coef);
  return total_norm;
}

void ema_update_multi_tensor(std::vector<torch::Tensor>& ema,
                             const std::vector<torch::Tensor>& params, double decay) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> detached;
  detached.reserve(params.size());
  for (const auto& p : params) detached.push_back(p.detach());
  at::_foreach_mul_(ema, decay);
  at::_foreach_add_(ema, detached, 1 - decay);
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
