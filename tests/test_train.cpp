// Training (train.h) on tiny modules: losses fall, the modules' gradients
// flow through the same classes inference uses, an interrupted run resumes to
// exactly the weights of an uninterrupted one, and what is saved loads back.

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "sdgen/error.h"
#include "sdgen/model.h"
#include "sdgen/random_model.h"
#include "sdgen/safetensors.h"
#include "sdgen/schedulers/scheduler.h"
#include "sdgen/tokenizer.h"
#include "sdgen/weights.h"
#include "synth/synth_world.h"
#include "test_util.h"
#include "train/train.h"

namespace fs = std::filesystem;
using namespace sdgen;

namespace {

struct TinySetup {
  std::unique_ptr<CLIPTokenizer> tokenizer;
  CLIPTextConfig text;
  UNetConfig unet;
};

TinySetup tiny_setup(const fs::path& dir) {
  TinySetup s;
  CLIPTokenizer::write_minimal_vocab(dir.string());
  s.tokenizer = CLIPTokenizer::from_path(dir.string(), {});
  const auto eos = static_cast<int>(s.tokenizer->token_id("<|endoftext|>"));
  auto arch = train::demo_architecture(static_cast<int>(s.tokenizer->vocab_size()),
                                       static_cast<int>(s.tokenizer->token_id("<|startoftext|>")),
                                       eos, eos);
  s.text = arch.text;
  s.text.hidden_size = 32;
  s.text.intermediate_size = 64;
  s.text.num_hidden_layers = 1;
  s.unet.block_out_channels = {16, 32};
  s.unet.down_block_types = {"DownBlock2D", "CrossAttnDownBlock2D"};
  s.unet.up_block_types = {"CrossAttnUpBlock2D", "UpBlock2D"};
  s.unet.layers_per_block = 1;
  s.unet.attention_head_dim = {2, 2};
  s.unet.transformer_layers_per_block = {1, 1};
  s.unet.cross_attention_dim = 32;
  s.unet.norm_num_groups = 8;
  s.unet.sample_size = 8;
  return s;
}

train::LatentSet tiny_latents() {
  torch::manual_seed(0);
  train::LatentSet data;
  data.latents = torch::randn({6, 4, 8, 8});
  std::mt19937_64 rng(0);
  for (int i = 0; i < 6; ++i) data.captions.push_back(synth::random_spec(rng).caption());
  return data;
}

struct TinyModules {
  CLIPTextModel text;
  UNet2DConditionModel unet;
};

// Randomly initialised tiny text encoder + UNet (the same weights for a seed).
TinyModules tiny_modules(const TinySetup& setup, uint64_t seed) {
  torch::manual_seed(seed);
  TinyModules m{CLIPTextModel(setup.text), UNet2DConditionModel(setup.unet)};
  randomize_parameters(*m.text);
  randomize_parameters(*m.unet);
  return m;
}

// A short run on the tiny set: batch 3, a loss logged every step.
train::DiffusionTrainOptions short_run(int steps, int warmup) {
  train::DiffusionTrainOptions options;
  options.steps = steps;
  options.batch = 3;
  options.warmup = warmup;
  options.log_every = 1;
  return options;
}

// The loss of every step of train_diffusion, each checked to be finite.
std::vector<double> step_losses(TinyModules& m, const TinySetup& setup,
                                const train::LatentSet& data,
                                const train::DiffusionTrainOptions& options) {
  std::vector<double> losses;
  train::train_diffusion(m.text, m.unet, *setup.tokenizer, data, 1.0, options,
                         [&](int, double loss) { losses.push_back(loss); });
  EXPECT_EQ(losses.size(), static_cast<size_t>(options.steps));
  for (double loss : losses) EXPECT_TRUE(std::isfinite(loss));
  return losses;
}

// The first step's loss of a 2-step run from the same weights, its options
// changed by `change`.
double first_step_loss(const TinySetup& setup, const train::LatentSet& data,
                       const std::function<void(train::DiffusionTrainOptions&)>& change) {
  auto m = tiny_modules(setup, 1);
  auto options = short_run(2, 1);
  change(options);
  return step_losses(m, setup, data, options).at(0);
}

std::vector<torch::Tensor> snapshot(torch::nn::Module& module) {
  std::vector<torch::Tensor> out;
  for (auto& p : module.parameters()) out.push_back(p.detach().clone());
  return out;
}

}  // namespace

TEST(Train, DemoArchitectureBuildsAndRunsAt512) {
  auto arch = train::demo_architecture(96, 2, 3, 0);
  torch::manual_seed(0);
  UNet2DConditionModel unet(arch.unet);
  AutoencoderKL vae(arch.vae);
  CLIPTextModel text(arch.text);
  randomize_parameters(*unet);
  randomize_parameters(*vae);
  randomize_parameters(*text);
  torch::NoGradGuard no_grad;
  const auto ids = torch::randint(0, 96, {1, 77}, torch::kInt64);
  const auto context = text->forward(ids).hidden;
  ASSERT_EQ(context.sizes(), (std::vector<int64_t>{1, 77, arch.unet.cross_attention_dim}));
  const auto eps = unet->forward(torch::randn({1, 4, 64, 64}), torch::tensor({500}), context);
  EXPECT_EQ(eps.sizes(), (std::vector<int64_t>{1, 4, 64, 64}));
  EXPECT_EQ(vae->downsample_factor(), 8);
  const auto image = vae->decode(torch::randn({1, 4, 64, 64}));
  EXPECT_EQ(image.sizes(), (std::vector<int64_t>{1, 3, 512, 512}));
}

TEST(Train, DemoSizesShapeTheTextEncoderAndUNet) {
  // The defaults are the shipped model's architecture.
  const auto defaults = train::demo_architecture(96, 2, 3, 0);
  EXPECT_EQ(defaults.text.num_hidden_layers, 2);
  EXPECT_EQ(defaults.text.hidden_size, 64);
  EXPECT_EQ(defaults.unet.cross_attention_dim, 64);
  EXPECT_EQ(defaults.unet.down_block_types,
            (std::vector<std::string>{"DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D",
                                      "CrossAttnDownBlock2D"}));
  EXPECT_EQ(defaults.unet.up_block_types,
            (std::vector<std::string>{"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D",
                                      "UpBlock2D"}));

  const auto sizes = train::DemoSizes::from_json(
      {{"text_layers", 3}, {"text_width", 32}, {"attention_levels", 3}});
  EXPECT_EQ(train::DemoSizes::from_json(sizes.to_json()).to_json(), sizes.to_json());
  const auto arch = train::demo_architecture(96, 2, 3, 0, sizes);
  EXPECT_EQ(arch.text.num_hidden_layers, 3);
  EXPECT_EQ(arch.text.hidden_size, 32);
  EXPECT_EQ(arch.text.intermediate_size, 128);
  EXPECT_EQ(arch.unet.cross_attention_dim, 32);
  EXPECT_EQ(arch.unet.down_block_types,
            (std::vector<std::string>{"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                      "CrossAttnDownBlock2D"}));
  EXPECT_EQ(arch.unet.up_block_types,
            (std::vector<std::string>{"CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                      "CrossAttnUpBlock2D", "UpBlock2D"}));
  // Built through the config round trip sdgen's loader takes.
  torch::manual_seed(0);
  CLIPTextModel text(CLIPTextConfig::from_json(arch.text.to_json()));
  UNet2DConditionModel unet(UNetConfig::from_json(arch.unet.to_json()));
  randomize_parameters(*text);
  randomize_parameters(*unet);
  torch::NoGradGuard no_grad;
  const auto context = text->forward(torch::randint(0, 96, {1, 24}, torch::kInt64)).hidden;
  ASSERT_EQ(context.sizes(), (std::vector<int64_t>{1, 24, 32}));
  const auto eps = unet->forward(torch::randn({1, 4, 32, 32}), torch::tensor({500}), context);
  EXPECT_EQ(eps.sizes(), (std::vector<int64_t>{1, 4, 32, 32}));

  EXPECT_THROW(train::DemoSizes::from_json({{"text_layer", 3}}), Error);
  EXPECT_THROW(train::DemoSizes::from_json({{"text_width", 30}}), Error);
  EXPECT_THROW(train::DemoSizes::from_json({{"attention_levels", 0}}), Error);
  EXPECT_THROW(train::DemoSizes::from_json({{"attention_levels", 5}}), Error);
  EXPECT_THROW(train::DemoSizes::from_json({{"text_layers", "2"}}), Error);
  EXPECT_THROW(train::DemoSizes::from_json(nlohmann::json::array()), Error);
}

TEST(Train, VAELossFalls) {
  auto arch = train::demo_architecture(96, 2, 3, 0);
  torch::manual_seed(0);
  AutoencoderKL vae(arch.vae);
  randomize_parameters(*vae);
  train::VAETrainOptions options;
  options.steps = 30;
  options.batch = 4;
  options.crop = 32;
  options.pool = 4;
  options.log_every = 10;
  std::vector<double> losses;
  train::train_vae(vae, options, [&](int, double loss) { losses.push_back(loss); });
  ASSERT_EQ(losses.size(), 3u);
  EXPECT_TRUE(std::isfinite(losses.back()));
  EXPECT_LT(losses.back(), 0.8 * losses.front());
}

TEST(Train, DiffusionLossIsFiniteAndWeightsMove) {
  const auto dir = fs::path(test::temp_dir("train"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  auto m = tiny_modules(setup, 1);
  auto& text = m.text;
  auto& unet = m.unet;
  const auto unet_before = snapshot(*unet);
  const auto text_before = snapshot(*text);
  const auto options = short_run(6, 2);
  step_losses(m, setup, data, options);
  // Both the UNet and the text encoder learn (the text encoder through the
  // UNet's cross-attention).
  auto moved = [](const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
    double change = 0;
    for (size_t i = 0; i < a.size(); ++i) change += (a[i] - b[i]).abs().sum().item<double>();
    return change;
  };
  EXPECT_GT(moved(unet_before, snapshot(*unet)), 0.0);
  EXPECT_GT(moved(text_before, snapshot(*text)), 0.0);
  EXPECT_FALSE(unet->is_training());

  // A caption longer than the tokenizer's context is refused, not cut short.
  TokenizerConfig short_context;
  short_context.model_max_length = 6;
  const auto short_dir = dir / "short-tokenizer";
  CLIPTokenizer::write_minimal_vocab(short_dir.string());
  std::ofstream((short_dir / "tokenizer_config.json").string()) << short_context.to_json().dump(2);
  const auto short_tokenizer = CLIPTokenizer::from_path(short_dir.string(), {});
  ASSERT_EQ(short_tokenizer->max_length(), 6);
  try {
    train::train_diffusion(text, unet, *short_tokenizer, data, 1.0, options, [](int, double) {});
    ADD_FAILURE() << "a caption longer than the context was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model_max_length 6"), std::string::npos) << e.what();
  }
}

TEST(Train, ResumeFromAMidRunCheckpointMatchesAnUninterruptedRun) {
  const auto dir = fs::path(test::temp_dir("train_resume"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  train::DiffusionTrainOptions options;
  options.steps = 6;
  options.batch = 3;
  options.warmup = 2;
  options.seed = 9;

  auto run = [&](const train::DiffusionTrainOptions& o, uint64_t init_seed) {
    auto m = tiny_modules(setup, init_seed);
    auto& text = m.text;
    auto& unet = m.unet;
    train::train_diffusion(text, unet, *setup.tokenizer, data, 1.0, o);
    return snapshot(*unet);
  };
  const auto straight = run(options, 1);

  // Interrupt after step 3: a run whose checkpoint file is copied at step 3.
  auto with_checkpoint = options;
  with_checkpoint.checkpoint = (dir / "a.ckpt").string();
  with_checkpoint.checkpoint_every = 3;
  with_checkpoint.stop_after = 3;
  run(with_checkpoint, 1);
  ASSERT_TRUE(fs::exists(with_checkpoint.checkpoint));
  // Re-running the interrupted command is a no-op: the checkpoint stays at step 3.
  run(with_checkpoint, 1);
  {
    CLIPTextModel text(setup.text);
    UNet2DConditionModel unet(setup.unet);
    EXPECT_EQ(train::load_diffusion_checkpoint(text, unet, with_checkpoint.checkpoint), 3);
  }
  auto resume = with_checkpoint;
  resume.stop_after = 0;
  const auto resumed = run(resume, 7);  // other initial weights: all come from the checkpoint
  ASSERT_EQ(resumed.size(), straight.size());
  for (size_t i = 0; i < straight.size(); ++i) {
    EXPECT_TRUE(torch::allclose(resumed[i], straight[i], 1e-6, 1e-7)) << "parameter " << i;
  }
  // Replaying an earlier, shorter run of a recipe (scripts/train-default-model.sh
  // re-run from the top) leaves the finished checkpoint alone.
  auto earlier = with_checkpoint;
  earlier.steps = 4;
  earlier.stop_after = 4;
  run(earlier, 1);
  CLIPTextModel text(setup.text);
  UNet2DConditionModel unet(setup.unet);
  EXPECT_EQ(train::load_diffusion_checkpoint(text, unet, with_checkpoint.checkpoint), 6);
}

TEST(Train, SavedWeightsLoadBackStrictly) {
  const auto dir = fs::path(test::temp_dir("train_save"));
  auto arch = train::demo_architecture(96, 2, 3, 0);
  torch::manual_seed(3);
  UNet2DConditionModel unet(arch.unet);
  randomize_parameters(*unet);
  const auto path = (dir / "unet.safetensors").string();
  write_safetensors(path, named_tensors(*unet, "", torch::kFloat16));
  UNet2DConditionModel loaded(arch.unet);
  SafeTensorsFile file(path);
  load_weights(*loaded, tensors_with_prefix(file, ""), "unet");
  const auto a = snapshot(*unet);
  const auto b = snapshot(*loaded);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::allclose(b[i], a[i].to(torch::kFloat16).to(torch::kFloat32)));
  }
}

// bf16 autocast (how the default model's UNet stage ran): the same loss as fp32
// to bf16 precision before any update, weights, optimizer and EMA kept in fp32,
// and both modules learn.
TEST(Train, Bf16AutocastMatchesFp32AndKeepsFp32Weights) {
  const auto dir = fs::path(test::temp_dir("train_bf16"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  auto run = [&](bool bf16, std::vector<double>& losses) {
    auto m = tiny_modules(setup, 1);
    auto& text = m.text;
    auto& unet = m.unet;
    const auto before = snapshot(*unet);
    train::DiffusionTrainOptions options;
    options.steps = 4;
    options.batch = 3;
    options.warmup = 2;
    options.log_every = 1;
    options.bf16 = bf16;
    train::train_diffusion(text, unet, *setup.tokenizer, data, 1.0, options,
                           [&](int, double loss) { losses.push_back(loss); });
    double change = 0;
    const auto after = snapshot(*unet);
    for (size_t i = 0; i < after.size(); ++i) {
      EXPECT_EQ(after[i].scalar_type(), torch::kFloat32);
      change += (after[i] - before[i]).abs().sum().item<double>();
    }
    for (const auto& p : text->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);
    return change;
  };
  std::vector<double> fp32_losses, bf16_losses;
  run(false, fp32_losses);
  EXPECT_GT(run(true, bf16_losses), 0.0);
  ASSERT_EQ(bf16_losses.size(), 4u);
  for (double loss : bf16_losses) EXPECT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(bf16_losses[0], fp32_losses[0], 0.03 * fp32_losses[0]);
}

// The VAE's second stage: only the decoder learns (bf16 autocast), so latents
// encoded before it stay valid.
TEST(Train, DecoderStageLeavesTheEncoderAlone) {
  auto arch = train::demo_architecture(96, 2, 3, 0);
  torch::manual_seed(0);
  AutoencoderKL vae(arch.vae);
  randomize_parameters(*vae);
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : vae->named_parameters()) before[p.key()] = p.value().detach().clone();
  train::VAETrainOptions options;
  options.steps = 3;
  options.batch = 2;
  options.crop = 32;
  options.pool = 2;
  options.decoder_only = true;
  options.bf16 = true;
  options.log_every = 1;
  std::vector<double> losses;
  train::train_vae(vae, options, [&](int, double loss) { losses.push_back(loss); });
  ASSERT_EQ(losses.size(), 3u);
  for (double loss : losses) EXPECT_TRUE(std::isfinite(loss));
  double encoder_change = 0, decoder_change = 0;
  for (const auto& p : vae->named_parameters()) {
    EXPECT_EQ(p.value().scalar_type(), torch::kFloat32);
    const double change = (p.value() - before[p.key()]).abs().sum().item<double>();
    const bool encoder = p.key().rfind("encoder.", 0) == 0 || p.key().rfind("quant_conv.", 0) == 0;
    (encoder ? encoder_change : decoder_change) += change;
  }
  EXPECT_EQ(encoder_change, 0.0);
  EXPECT_GT(decoder_change, 0.0);
}

// What `sdgen-train export` loads: the EMA weights of a checkpoint are what a
// finished run leaves in its modules; the live weights differ from them.
TEST(Train, CheckpointExportLoadsTheEmaWeights) {
  const auto dir = fs::path(test::temp_dir("train_export"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  train::DiffusionTrainOptions options;
  options.steps = 4;
  options.batch = 3;
  options.warmup = 2;
  options.checkpoint = (dir / "run.ckpt").string();
  auto m = tiny_modules(setup, 1);
  auto& text = m.text;
  auto& unet = m.unet;
  train::train_diffusion(text, unet, *setup.tokenizer, data, 1.0, options);
  const auto trained = snapshot(*unet);

  auto m2 = tiny_modules(setup, 5);
  auto& text2 = m2.text;
  auto& unet2 = m2.unet;
  EXPECT_EQ(train::load_diffusion_checkpoint(text2, unet2, options.checkpoint), 4);
  EXPECT_EQ(train::diffusion_checkpoint_step(options.checkpoint), 4);
  EXPECT_THROW(train::diffusion_checkpoint_step((dir / "none.ckpt").string()), Error);
  const auto ema = snapshot(*unet2);
  for (size_t i = 0; i < ema.size(); ++i) EXPECT_TRUE(torch::equal(ema[i], trained[i]));
  train::load_diffusion_checkpoint(text2, unet2, options.checkpoint, /*ema=*/false);
  double difference = 0;
  const auto live = snapshot(*unet2);
  for (size_t i = 0; i < live.size(); ++i)
    difference += (live[i] - trained[i]).abs().sum().item<double>();
  EXPECT_GT(difference, 0.0);

  UNet2DConditionModel other(setup.unet);  // a different architecture is refused
  auto wide = setup.unet;
  wide.block_out_channels = {8, 16};
  UNet2DConditionModel wrong(wide);
  EXPECT_THROW(train::load_diffusion_checkpoint(text2, wrong, options.checkpoint), Error);
  EXPECT_THROW(train::load_diffusion_checkpoint(text2, other, (dir / "none.ckpt").string()), Error);

  // A longer run on the checkpoint of the finished one continues it (how a
  // recipe stage is extended): steps 5 and 6 only, from the saved state.
  auto longer = options;
  longer.steps = 6;
  longer.log_every = 1;
  auto m3 = tiny_modules(setup, 9);
  std::vector<int> logged;
  train::train_diffusion(m3.text, m3.unet, *setup.tokenizer, data, 1.0, longer,
                         [&](int step, double) { logged.push_back(step); });
  EXPECT_EQ(logged, (std::vector<int>{5, 6}));
  EXPECT_EQ(train::diffusion_checkpoint_step(longer.checkpoint), 6);
  double moved = 0;
  const auto extended = snapshot(*m3.unet);
  for (size_t i = 0; i < extended.size(); ++i)
    moved += (extended[i] - trained[i]).abs().sum().item<double>();
  EXPECT_GT(moved, 0.0);
}

// Offset noise (how the default model learnt to take its background from the
// caption): the same run draws other targets, and trains.
TEST(Train, OffsetNoiseChangesTheTargets) {
  const auto dir = fs::path(test::temp_dir("train_offset"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  auto first_loss = [&](double offset) {
    return first_step_loss(setup, data, [&](auto& o) { o.noise_offset = offset; });
  };
  EXPECT_NE(first_loss(0.0), first_loss(0.5));
}

TEST(Train, HighNoiseShareDrawsFromTheNoisierHalf) {
  torch::manual_seed(3);
  const auto t = torch::randint(0, 1000, {20000}, torch::kInt64);
  auto high_fraction = [](const torch::Tensor& x) {
    return (x >= 500).to(torch::kFloat64).mean().item<double>();
  };
  EXPECT_TRUE(torch::equal(train::bias_to_high_noise(t, 1000, 0.0), t));
  const auto all = train::bias_to_high_noise(t, 1000, 1.0);
  EXPECT_GE(all.min().item<int64_t>(), 500);
  EXPECT_LE(all.max().item<int64_t>(), 999);
  // Half redrawn from [500, 1000): 0.5 + 0.5 * 0.5 of them up there.
  const auto half = train::bias_to_high_noise(t, 1000, 0.5);
  EXPECT_NEAR(high_fraction(t), 0.5, 0.02);
  EXPECT_NEAR(high_fraction(half), 0.75, 0.02);
  EXPECT_GE(half.min().item<int64_t>(), 0);
  // The low half keeps only original draws.
  const auto low = half < 500;
  EXPECT_TRUE(torch::equal(half.masked_select(low), t.masked_select(low)));
  EXPECT_THROW(train::bias_to_high_noise(t, 1000, 1.5), Error);
  EXPECT_THROW(train::bias_to_high_noise(t, 1000, -0.1), Error);
  // A generator of its own, seeded as the global one was, draws what that drew
  // (train_diffusion draws with one per step; earlier runs with the global one).
  torch::manual_seed(8);
  const auto global = train::bias_to_high_noise(t, 1000, 0.5);
  const auto own =
      train::bias_to_high_noise(t, 1000, 0.5, at::make_generator<at::CPUGeneratorImpl>(8));
  EXPECT_TRUE(torch::equal(own, global));

  // train_diffusion takes the share, and refuses one out of range.
  const auto dir = fs::path(test::temp_dir("train_high_noise"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  auto m = tiny_modules(setup, 1);
  auto options = short_run(2, 1);
  options.high_noise_share = 0.5;
  step_losses(m, setup, data, options);
  options.high_noise_share = 2;
  EXPECT_THROW(train::train_diffusion(m.text, m.unet, *setup.tokenizer, data, 1.0, options), Error);
}

// Multi-resolution noise: same overall scale, much more power at the scale of
// a shape (8x8-latent-pixel blocks), and off at 0.
TEST(Train, PyramidNoiseAddsCoarseNoiseAtTheSameScale) {
  torch::manual_seed(4);
  const auto noise = torch::randn({8, 4, 64, 64});
  EXPECT_TRUE(torch::equal(train::add_pyramid_noise(noise, 0.0), noise));
  const auto pyramid = train::add_pyramid_noise(noise, 0.6);
  ASSERT_EQ(pyramid.sizes(), noise.sizes());
  EXPECT_NEAR(pyramid.std().item<double>(), noise.std().item<double>(), 1e-4);
  auto block_mean_variance = [](const torch::Tensor& x) {
    return torch::avg_pool2d(x, 8).var().item<double>();
  };
  EXPECT_NEAR(block_mean_variance(noise), 1.0 / 64, 0.004);  // white noise
  EXPECT_GT(block_mean_variance(pyramid), 3 * block_mean_variance(noise));
  EXPECT_THROW(train::add_pyramid_noise(noise, 1.0), Error);
  EXPECT_THROW(train::add_pyramid_noise(noise, -0.5), Error);
  torch::manual_seed(9);
  const auto global = train::add_pyramid_noise(noise, 0.6);
  const auto own =
      train::add_pyramid_noise(noise, 0.6, at::make_generator<at::CPUGeneratorImpl>(9));
  EXPECT_TRUE(torch::equal(own, global));
  EXPECT_FALSE(torch::equal(own, pyramid));

  const auto dir = fs::path(test::temp_dir("train_pyramid"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  auto first_loss = [&](double discount) {
    return first_step_loss(setup, data, [&](auto& o) { o.pyramid_noise = discount; });
  };
  EXPECT_NE(first_loss(0.0), first_loss(0.6));
  auto m = tiny_modules(setup, 1);
  auto options = short_run(2, 1);
  options.pyramid_noise = 1.5;
  EXPECT_THROW(train::train_diffusion(m.text, m.unet, *setup.tokenizer, data, 1.0, options), Error);
}

// Pair captions said the other way round change what a step trains on, never
// into a held-out caption: a set whose one pair caption reverses into a
// held-out one trains as without the option (its draw comes last).
TEST(Train, SwapPairsSaysPairCaptionsTheOtherWayButNeverHeldOut) {
  const auto dir = fs::path(test::temp_dir("train_swap"));
  auto setup = tiny_setup(dir / "tokenizer");
  auto one_caption = [](const std::string& caption) {
    torch::manual_seed(0);
    train::LatentSet data;
    data.latents = torch::randn({1, 4, 8, 8});
    data.captions = {caption};
    return data;
  };
  auto first_loss = [&](const train::LatentSet& data, double swap) {
    return first_step_loss(setup, data, [&](auto& o) {
      o.swap_pairs = swap;
      o.caption_dropout = 0;
    });
  };
  // A training pair whose reversal is a training caption too.
  synth::SceneSpec open;
  std::mt19937_64 rng(2);
  do {
    open = synth::random_spec(rng);
  } while (open.objects.size() != 2 || synth::is_held_out(synth::reversed_pair(open)));
  const auto swappable = one_caption(open.caption());
  EXPECT_NE(first_loss(swappable, 0.0), first_loss(swappable, 1.0));
  // A training pair whose reversal is held out, and a one-shape caption.
  const auto held = synth::reversed_pair(synth::held_out_specs(1).at(0));
  ASSERT_FALSE(synth::is_held_out(held));
  for (const auto& caption : {held.caption(), std::string("a red circle on the left")}) {
    const auto kept = one_caption(caption);
    EXPECT_EQ(first_loss(kept, 0.0), first_loss(kept, 1.0)) << caption;
  }
  auto m = tiny_modules(setup, 1);
  auto options = short_run(2, 1);
  options.swap_pairs = 1.5;
  EXPECT_THROW(train::train_diffusion(m.text, m.unet, *setup.tokenizer, swappable, 1.0, options),
               Error);
}

// The first step's loss recomputed from its draws (the order train_diffusion
// draws them in: batch, caption dropout, timesteps, noise), for the options'
// prediction type and schedule, from diffusers' formulas: x_t = sqrt(a) x_0 +
// sqrt(1 - a) noise, v = sqrt(a) noise - sqrt(1 - a) x_0 (get_velocity), SNR =
// a / (1 - a), min-SNR-5 weight min(SNR, 5) / SNR for epsilon and
// min(SNR + 1, 5) / (SNR + 1) for v.
double recomputed_first_loss(const TinySetup& setup, const train::LatentSet& data,
                             const train::DiffusionTrainOptions& o) {
  auto m = tiny_modules(setup, 1);
  SchedulerConfig schedule;
  schedule.rescale_betas_zero_snr = o.zero_terminal_snr;
  const auto alphas = make_scheduler("ddpm", schedule)->alphas_cumprod_tensor().to(torch::kFloat32);
  torch::manual_seed(o.seed * 1000003);
  const auto index = torch::randint(0, data.latents.size(0), {o.batch}, torch::kInt64);
  torch::rand({o.batch});  // caption dropout, 0 in these runs
  const auto t = torch::randint(0, 1000, {o.batch}, torch::kInt64);
  const auto x0 = data.latents.index_select(0, index);
  const auto noise = torch::randn_like(x0);
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < o.batch; ++i) {
    const auto ids = setup.tokenizer->encode_padded(data.captions.at(index[i].item<int64_t>()));
    rows.insert(rows.end(), ids.begin(), ids.end());
  }
  const auto ids = torch::tensor(rows, torch::kInt64).view({o.batch, -1});
  const auto a = alphas.index_select(0, t).view({-1, 1, 1, 1});
  torch::NoGradGuard no_grad;
  const auto prediction =
      m.unet->forward(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, m.text->forward(ids).hidden);
  const bool v = o.prediction_type == "v_prediction";
  const auto target = v ? a.sqrt() * noise - (1 - a).sqrt() * x0 : noise;
  const auto snr = (a / (1 - a)).view({-1});
  const auto weight =
      v ? torch::clamp_max(snr + 1, 5.0) / (snr + 1) : torch::clamp_max(snr, 5.0) / snr;
  return ((prediction - target).pow(2).mean({1, 2, 3}) * weight).mean().item<double>();
}

// What the UNet learns: epsilon on SD1.5's schedule by default, v on the
// schedule rescaled to zero terminal SNR when asked (Lin et al. 2023), whose
// t = 999 holds no trace of the picture; the scheduler config a trained model
// carries says which; epsilon at zero SNR and unknown targets are refused.
TEST(Train, VPredictionOnTheZeroSnrScheduleLearnsTheVelocity) {
  const auto dir = fs::path(test::temp_dir("train_v"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  train::DiffusionTrainOptions epsilon = short_run(2, 1);
  epsilon.caption_dropout = 0;
  auto v = epsilon;
  v.prediction_type = "v_prediction";
  v.zero_terminal_snr = true;
  auto v_sd = v;
  v_sd.zero_terminal_snr = false;
  for (const auto& options : {epsilon, v, v_sd}) {
    const double trained = first_step_loss(setup, data, [&](auto& o) { o = options; });
    const double recomputed = recomputed_first_loss(setup, data, options);
    EXPECT_NEAR(trained, recomputed, 1e-5 * recomputed)
        << options.prediction_type << " zero SNR " << options.zero_terminal_snr;
  }
  EXPECT_NE(first_step_loss(setup, data, [&](auto& o) { o = v; }),
            first_step_loss(setup, data, [&](auto& o) { o = v_sd; }));

  // The scheduler config of each: SD1.5's DDIM for epsilon (what models/
  // default has always carried), trailing timesteps from t = 999 with zero SNR.
  EXPECT_EQ(train::trained_scheduler_config(epsilon).to_json(), SchedulerConfig{}.to_json());
  const auto zero = train::trained_scheduler_config(v);
  EXPECT_EQ(zero.prediction_type, "v_prediction");
  EXPECT_TRUE(zero.rescale_betas_zero_snr);
  EXPECT_EQ(zero.timestep_spacing, "trailing");
  EXPECT_EQ(zero.class_name, "DDIMScheduler");
  EXPECT_EQ(train::trained_scheduler_config(v_sd).timestep_spacing, "leading");
  EXPECT_EQ(make_scheduler("ddim", zero)->alphas_cumprod_tensor()[999].item<double>(), 0.0);

  auto bad = epsilon;
  bad.zero_terminal_snr = true;
  EXPECT_THROW(train::trained_scheduler_config(bad), Error);
  auto m = tiny_modules(setup, 1);
  EXPECT_THROW(train::train_diffusion(m.text, m.unet, *setup.tokenizer, data, 1.0, bad), Error);
  bad = epsilon;
  bad.prediction_type = "sample";
  EXPECT_THROW(train::train_diffusion(m.text, m.unet, *setup.tokenizer, data, 1.0, bad), Error);

  // A model folder keeps the schedule it is written with, opens with it, and
  // sdgen's loader reads it (TrainCli samples from such a folder).
  train::DemoArchitecture arch;
  arch.text = setup.text;
  arch.unet = setup.unet;
  arch.vae = train::demo_architecture(10, 0, 1, 1).vae;
  AutoencoderKL vae(arch.vae);
  randomize_parameters(*vae);
  train::write_model_folder((dir / "v").string(), arch, m.text, m.unet, vae,
                            (dir / "tokenizer").string(), zero);
  const auto opened = train::load_trainable_model((dir / "v").string());
  EXPECT_EQ(opened.scheduler.prediction_type, "v_prediction");
  EXPECT_TRUE(opened.scheduler.rescale_betas_zero_snr);
  EXPECT_EQ(opened.scheduler.timestep_spacing, "trailing");
  LoadOptions load;
  load.model_path = (dir / "v").string();
  const auto loaded = load_model(load);
  EXPECT_EQ(loaded.scheduler_config.prediction_type, "v_prediction");
  // Such a folder asks for guidance_rescale 0.7 (Lin et al. 2023) unless told
  // otherwise; an epsilon folder for none; a bad value is refused by name.
  ASSERT_TRUE(loaded.default_guidance_rescale.has_value());
  EXPECT_DOUBLE_EQ(*loaded.default_guidance_rescale, 0.7);
  train::write_model_folder((dir / "eps").string(), arch, m.text, m.unet, vae,
                            (dir / "tokenizer").string(), train::trained_scheduler_config(epsilon));
  load.model_path = (dir / "eps").string();
  EXPECT_FALSE(load_model(load).default_guidance_rescale.has_value());
  {
    std::ofstream index(dir / "eps" / "model_index.json");
    index << R"({"_class_name": "StableDiffusionPipeline", "_sdgen_guidance_rescale": 1.5})";
  }
  try {
    load_model(load);
    ADD_FAILURE() << "a guidance rescale of 1.5 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("_sdgen_guidance_rescale"), std::string::npos) << e.what();
  }
  load.model_path = (dir / "v").string();
  fs::remove(dir / "v" / "scheduler" / "scheduler_config.json");  // SD1.5's when missing
  EXPECT_EQ(train::load_trainable_model((dir / "v").string()).scheduler.to_json(),
            SchedulerConfig{}.to_json());
}

// What `sdgen-train finetune` starts from: a written model folder opens again
// as fp32 modules with its configs and tokenizer, its weights those written
// (fp16), and trains on; sdgen's inference path loads what it writes.
TEST(Train, ModelFolderOpensForMoreTraining) {
  const auto dir = fs::path(test::temp_dir("train_model_folder"));
  auto setup = tiny_setup(dir / "tokenizer");
  auto m = tiny_modules(setup, 1);
  train::DemoArchitecture arch;
  arch.text = setup.text;
  arch.unet = setup.unet;
  arch.vae = train::demo_architecture(10, 0, 1, 1).vae;
  arch.vae.scaling_factor = 0.7;
  AutoencoderKL vae(arch.vae);
  randomize_parameters(*vae);
  train::write_model_folder((dir / "model").string(), arch, m.text, m.unet, vae,
                            (dir / "tokenizer").string());

  auto opened = train::load_trainable_model((dir / "model").string());
  EXPECT_EQ(opened.arch.text.to_json(), arch.text.to_json());
  EXPECT_EQ(opened.arch.unet.to_json(), arch.unet.to_json());
  EXPECT_EQ(opened.arch.vae.to_json(), arch.vae.to_json());
  EXPECT_DOUBLE_EQ(opened.arch.vae.scaling_factor, 0.7);
  EXPECT_EQ(opened.tokenizer->encode_padded("a red circle"),
            setup.tokenizer->encode_padded("a red circle"));
  const auto written = snapshot(*m.unet);
  const auto read = snapshot(*opened.unet);
  ASSERT_EQ(read.size(), written.size());
  for (size_t i = 0; i < read.size(); ++i) {
    EXPECT_EQ(read[i].scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(read[i], written[i].to(torch::kFloat16).to(torch::kFloat32)));
  }
  const auto text_read = snapshot(*opened.text_encoder);
  const auto text_written = snapshot(*m.text);
  for (size_t i = 0; i < text_read.size(); ++i)
    EXPECT_TRUE(
        torch::equal(text_read[i], text_written[i].to(torch::kFloat16).to(torch::kFloat32)));

  // More training moves the weights; the result is a folder sdgen loads.
  auto options = short_run(3, 1);
  train::train_diffusion(opened.text_encoder, opened.unet, *opened.tokenizer, tiny_latents(),
                         opened.arch.vae.scaling_factor, options);
  double moved = 0;
  const auto trained = snapshot(*opened.unet);
  for (size_t i = 0; i < trained.size(); ++i)
    moved += (trained[i] - read[i]).abs().sum().item<double>();
  EXPECT_GT(moved, 0.0);
  train::write_model_folder((dir / "more").string(), opened.arch, opened.text_encoder, opened.unet,
                            opened.vae, opened.tokenizer_dir);
  LoadOptions load;
  load.model_path = (dir / "more").string();
  const auto model = load_model(load);
  EXPECT_EQ(model.layout, "diffusers");
  EXPECT_DOUBLE_EQ(train::load_trainable_model((dir / "more").string()).arch.vae.scaling_factor,
                   0.7);

  // Writing over the folder the tokenizer is read from would copy files onto
  // themselves: refused.
  EXPECT_THROW(
      train::write_model_folder((dir / "more").string(), opened.arch, opened.text_encoder,
                                opened.unet, opened.vae, (dir / "more" / "tokenizer").string()),
      Error);
  // A missing part, or weights that do not fit the config, name the file.
  fs::remove(dir / "more" / "vae" / "config.json");
  EXPECT_THROW(train::load_trainable_model((dir / "more").string()), Error);
  auto wide = arch.unet;
  wide.block_out_channels = {8, 16};
  {
    std::ofstream config(dir / "model" / "unet" / "config.json");
    config << wide.to_json().dump(2);
  }
  try {
    train::load_trainable_model((dir / "model").string());
    ADD_FAILURE() << "a UNet config that does not fit the weights was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("diffusion_pytorch_model.safetensors"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(train::load_trainable_model((dir / "none").string()), Error);
}

// The scenes of a training set are drawn in order and rendered in parallel:
// the latents are those of the scenes drawn and rendered one after another
// (nine scenes: a full chunk of eight and a part one).
TEST(Train, TrainingScenesRenderedInParallelAreTheSequentialOnes) {
  AutoencoderKL vae(train::demo_architecture(10, 0, 1, 1).vae);
  torch::manual_seed(4);
  randomize_parameters(*vae);
  vae->eval();
  const auto set = train::encode_training_set(vae, 9, 64, 21, {}, synth::PairLayout::kHalves);
  ASSERT_EQ(set.captions.size(), 9u);
  std::mt19937_64 rng(21);
  torch::NoGradGuard no_grad;
  for (int i = 0; i < 9; ++i) {
    const auto spec = synth::random_spec(rng);
    EXPECT_EQ(set.captions[i], spec.caption()) << "scene " << i;
    const auto image = synth::render(synth::place_scene(spec, 64, rng, synth::PairLayout::kHalves));
    const auto latent = vae->encode(train::to_model_input(image.unsqueeze(0))).mean[0];
    EXPECT_LT(test::max_abs_diff(set.latents[i], latent), 1e-5) << "scene " << i;
  }
}

// On a GPU (skipped elsewhere; the CPU path is every other test here):
// batches, noise and timesteps are drawn on the CPU, so a CUDA run sees what
// a CPU run sees and its losses and weights agree to rounding; the modules
// come back to the CPU; a checkpoint written from the GPU loads on the CPU;
// bf16 autocast runs there; scenes encode there to the CPU's latents.
// The multi-tensor step (what a GPU run uses) against clip_grad_norm_,
// AdamW::step and the EMA of a CPU run, on parameters of several shapes, with
// gradients that are clipped at some steps and not at others; its optimizer
// state saves and continues in torch's AdamW.
TEST(Train, MultiTensorStepIsThePerParameterStep) {
  torch::manual_seed(11);
  const std::vector<std::vector<int64_t>> shapes = {{16, 8, 3, 3}, {16}, {7, 5}, {1}, {2, 3, 4}};
  std::vector<torch::Tensor> per_param, multi;
  for (const auto& shape : shapes) {
    per_param.push_back(torch::randn(shape).requires_grad_());
    multi.push_back(per_param.back().detach().clone().requires_grad_());
  }
  auto ema_per_param = per_param, ema_multi = multi;
  for (auto& e : ema_per_param) e = e.detach().clone();
  for (auto& e : ema_multi) e = e.detach().clone();
  const auto options = torch::optim::AdamWOptions(1e-2).weight_decay(0.01);
  torch::optim::AdamW classic(per_param, options);
  torch::optim::AdamW fast(multi, options);
  const double grad_scales[] = {0.01, 3.0, 0.2, 5.0};
  auto max_diff = [](const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
    double diff = 0;
    for (size_t i = 0; i < a.size(); ++i)
      diff = std::max(diff, test::max_abs_diff(a[i].detach(), b[i].detach()));
    return diff;
  };
  for (int step = 0; step < 4; ++step) {
    for (size_t i = 0; i < per_param.size(); ++i) {
      const auto grad = grad_scales[step] * torch::randn(per_param[i].sizes());
      per_param[i].mutable_grad() = grad.clone();
      multi[i].mutable_grad() = grad.clone();
    }
    const double norm = torch::nn::utils::clip_grad_norm_(per_param, 1.0);
    EXPECT_NEAR(train::clip_grad_norm_multi_tensor(multi, 1.0), norm, 1e-6 * norm);
    double grad_diff = 0, clipped_norm = 0;
    for (size_t i = 0; i < per_param.size(); ++i) {
      grad_diff = std::max(grad_diff, test::max_abs_diff(per_param[i].grad(), multi[i].grad()));
      clipped_norm += multi[i].grad().pow(2).sum().item<double>();
    }
    EXPECT_EQ(grad_diff, 0.0) << "step " << step;
    if (norm > 1) {
      EXPECT_NEAR(std::sqrt(clipped_norm), 1.0, 1e-5) << "step " << step;
    } else {
      EXPECT_NEAR(std::sqrt(clipped_norm), norm, 1e-6) << "step " << step;
    }
    classic.step();
    train::adamw_step_multi_tensor(fast);
    EXPECT_EQ(max_diff(per_param, multi), 0.0) << "step " << step;
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < per_param.size(); ++i)
        ema_per_param[i].mul_(0.9).add_(per_param[i], 1 - 0.9);
    }
    train::ema_update_multi_tensor(ema_multi, multi, 0.9);
    EXPECT_EQ(max_diff(ema_per_param, ema_multi), 0.0) << "step " << step;
  }
  // The multi-tensor state saves and goes on in torch's AdamW (a step count
  // other than 4 would move the weights differently).
  torch::serialize::OutputArchive saved;
  fast.save(saved);
  std::stringstream buffer;
  saved.save_to(buffer);
  torch::serialize::InputArchive loaded;
  loaded.load_from(buffer);
  torch::optim::AdamW resumed(multi, options);
  resumed.load(loaded);
  for (size_t i = 0; i < per_param.size(); ++i) {
    const auto grad = torch::randn(per_param[i].sizes());
    per_param[i].mutable_grad() = grad.clone();
    multi[i].mutable_grad() = grad.clone();
  }
  classic.step();
  resumed.step();
  EXPECT_EQ(max_diff(per_param, multi), 0.0);
}

TEST(Train, DiffusionOnCudaMatchesTheCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device; skipping";
  const torch::Device cuda(torch::kCUDA, 0);
  // fp32 without TF32, so that the GPU computes what the CPU does to rounding:
  // with cuDNN's TF32 convolutions (libtorch's default) gradients differ in
  // the third digit, and Adam's first steps, which move a weight by about lr
  // whatever its gradient's size, then moved weights with near-zero gradients
  // apart by up to lr (seen on an H200: 1e-3 after 3 steps at lr 1e-3).
  auto& context = at::globalContext();
  const bool tf32_cudnn = context.allowTF32CuDNN();
  const bool tf32_cublas = context.allowTF32CuBLAS();
  context.setAllowTF32CuDNN(false);
  context.setAllowTF32CuBLAS(false);
  struct Restore {
    bool cudnn, cublas;
    ~Restore() {
      at::globalContext().setAllowTF32CuDNN(cudnn);
      at::globalContext().setAllowTF32CuBLAS(cublas);
    }
  } restore{tf32_cudnn, tf32_cublas};
  const auto dir = fs::path(test::temp_dir("train_cuda"));
  auto setup = tiny_setup(dir / "tokenizer");
  const auto data = tiny_latents();
  auto cpu = tiny_modules(setup, 1);
  auto gpu = tiny_modules(setup, 1);
  auto options = short_run(3, 1);
  const auto cpu_losses = step_losses(cpu, setup, data, options);
  options.device = cuda;
  options.checkpoint = (dir / "gpu.ckpt").string();
  const auto gpu_losses = step_losses(gpu, setup, data, options);
  ASSERT_EQ(gpu_losses.size(), cpu_losses.size());
  for (size_t i = 0; i < cpu_losses.size(); ++i)
    EXPECT_NEAR(gpu_losses[i], cpu_losses[i], 1e-3 * cpu_losses[i]) << "step " << i + 1;
  const auto cpu_weights = snapshot(*cpu.unet);
  const auto gpu_weights = snapshot(*gpu.unet);
  double weight_diff = 0;
  for (size_t i = 0; i < gpu_weights.size(); ++i) {
    EXPECT_TRUE(gpu_weights[i].device().is_cpu());
    weight_diff = std::max(weight_diff, test::max_abs_diff(gpu_weights[i], cpu_weights[i]));
  }
  std::printf("GPU vs CPU after 3 steps: largest weight difference %.3g\n", weight_diff);
  EXPECT_LT(weight_diff, 1e-4);
  auto loaded = tiny_modules(setup, 2);
  EXPECT_EQ(train::load_diffusion_checkpoint(loaded.text, loaded.unet, options.checkpoint), 3);
  const auto loaded_weights = snapshot(*loaded.unet);
  for (size_t i = 0; i < gpu_weights.size(); ++i)
    EXPECT_TRUE(torch::equal(loaded_weights[i], gpu_weights[i]));
  // A GPU run (multi-tensor AdamW state) interrupted after step 2 and resumed
  // ends where the uninterrupted one did.
  auto interrupted = options;
  interrupted.checkpoint = (dir / "gpu-resumed.ckpt").string();
  interrupted.stop_after = 2;
  auto first_part = tiny_modules(setup, 1);
  train::train_diffusion(first_part.text, first_part.unet, *setup.tokenizer, data, 1.0,
                         interrupted);
  interrupted.stop_after = 0;
  auto second_part = tiny_modules(setup, 3);
  train::train_diffusion(second_part.text, second_part.unet, *setup.tokenizer, data, 1.0,
                         interrupted);
  const auto resumed_weights = snapshot(*second_part.unet);
  double resume_diff = 0;
  for (size_t i = 0; i < gpu_weights.size(); ++i)
    resume_diff = std::max(resume_diff, test::max_abs_diff(resumed_weights[i], gpu_weights[i]));
  std::printf("GPU run resumed after step 2 vs uninterrupted: largest difference %.3g\n",
              resume_diff);
  EXPECT_LT(resume_diff, 1e-5);

  auto bf16 = tiny_modules(setup, 1);
  auto bf16_options = short_run(2, 1);
  bf16_options.device = cuda;
  bf16_options.bf16 = true;
  const auto bf16_losses = step_losses(bf16, setup, data, bf16_options);
  EXPECT_NEAR(bf16_losses[0], cpu_losses[0], 0.05 * cpu_losses[0]);

  AutoencoderKL vae(train::demo_architecture(10, 0, 1, 1).vae);
  torch::manual_seed(3);
  randomize_parameters(*vae);
  const auto on_cpu = train::encode_training_set(vae, 2, 64, 5);
  const auto on_gpu = train::encode_training_set(vae, 2, 64, 5, {}, synth::PairLayout::kFree, cuda);
  EXPECT_EQ(on_gpu.captions, on_cpu.captions);
  EXPECT_TRUE(on_gpu.latents.device().is_cpu());
  const double latent_diff = test::max_abs_diff(on_gpu.latents, on_cpu.latents);
  std::printf("GPU vs CPU encoded scenes: largest difference %.3g\n", latent_diff);
  EXPECT_LT(latent_diff, 1e-3);
  for (const auto& p : vae->parameters()) EXPECT_TRUE(p.device().is_cpu());
}
