// The VAE stages of the training recipe (train.h): training the KL-VAE on
// crops of renders, and encoding the training set with it.

#include <algorithm>
#include <random>
#include <vector>

#include <ATen/Parallel.h>

#include "sdgen/error.h"
#include "synth/synth_world.h"
#include "train/train.h"
#include "train/trainer_common.h"

namespace sdgen::train {

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

}  // namespace sdgen::train
