// sdgen-train all: the whole recipe of the default model (train.h), each stage
// skipped when its result is already in the work folder (so an interrupted run
// resumes).

#include <cstdio>
#include <cstdlib>
#include <random>

#include "sdgen/error.h"
#include "sdgen/random_model.h"
#include "sdgen/runtime.h"
#include "train/train_cli_common.h"

namespace sdgen::train::cli {

namespace {

// Stage 2: the SentencePiece tokenizer, trained by the sdgen-spm tool beside
// this one (libsentencepiece cannot share a process with libtorch).
void train_tokenizer(const fs::path& captions, const fs::path& dir, int vocab_size,
                     const std::string& self) {
  const auto spm = fs::path(self).parent_path() / "sdgen-spm";
  if (!fs::exists(spm)) throw Error("sdgen-spm not found beside sdgen-train: " + spm.string());
  const std::string command = "\"" + spm.string() + "\" train --input \"" + captions.string() +
                              "\" --out \"" + dir.string() + "\" --vocab-size " +
                              std::to_string(vocab_size) + " --max-length 77";
  if (std::system(command.c_str()) != 0) throw Error("tokenizer training failed: " + command);
}

// Fixes what a work folder's UNet stage is built with, before its first step:
// the sizes (architecture.json) and the context length (the tokenizer's
// model_max_length). Once the stage has begun, options that differ are errors.
void set_up_unet_stage(const AllOptions& o, const fs::path& work) {
  const auto sizes_path = work / "architecture.json";
  const auto tokenizer_config = work / "tokenizer" / "tokenizer_config.json";
  auto sizes = work_sizes(work);
  auto config = read_json(tokenizer_config);
  const int context = config.value("model_max_length", 77);
  const bool begun = fs::exists(sizes_path) || fs::exists(work / "diffusion.ckpt") ||
                     fs::exists(work / "text_encoder.safetensors");
  auto check = [&](const char* option, int given, int fixed) {
    if (begun && given != 0 && given != fixed)
      throw Error(std::string(option) + " " + std::to_string(given) + " differs from the " +
                  std::to_string(fixed) + " the UNet stage of " + work.string() +
                  " was begun with");
  };
  check("--text-layers", o.text_layers, sizes.text_layers);
  check("--text-width", o.text_width, sizes.text_width);
  check("--attention-levels", o.attention_levels, sizes.attention_levels);
  check("--context", o.context, context);
  if (begun) return;
  if (o.text_layers != 0) sizes.text_layers = o.text_layers;
  if (o.text_width != 0) sizes.text_width = o.text_width;
  if (o.attention_levels != 0) sizes.attention_levels = o.attention_levels;
  sizes.validate();
  if (o.context != 0 && o.context != context) {
    if (o.context < 8 || o.context > 77)
      throw Error("--context must be 8-77 (the text encoder has 77 positions), got " +
                  std::to_string(o.context));
    config["model_max_length"] = o.context;
    write_text(tokenizer_config, config.dump(2));
  }
  write_text(sizes_path, sizes.to_json().dump(2));
}

}  // namespace

int run_all(const AllOptions& o, const std::string& self) {
  const auto started = Clock::now();
  const fs::path work(o.work), out(o.out);
  fs::create_directories(work);
  const int threads = init_cpu_runtime(o.threads);
  std::fprintf(stderr, "sdgen-train: %d threads, %s, work folder %s\n", threads, o.precision.name(),
               work.c_str());

  // 1. Captions of training scenes (never a held-out pair).
  const auto captions_path = work / "captions.txt";
  if (!fs::exists(captions_path)) {
    std::mt19937_64 rng(o.seed);
    std::string text;
    for (int i = 0; i < o.captions; ++i) text += synth::random_spec(rng).caption() + "\n";
    write_text(captions_path, text);
  }
  // 2. Tokenizer.
  const auto tokenizer_dir = work / "tokenizer";
  if (SentencePieceTokenizer::find_model(tokenizer_dir.string()).empty()) {
    train_tokenizer(captions_path, tokenizer_dir, o.vocab_size, self);
  }
  auto trained = work_architecture(work);
  auto& tokenizer = trained.tokenizer;
  auto& arch = trained.arch;

  // 3. VAE.
  torch::manual_seed(o.seed);
  AutoencoderKL vae(arch.vae);
  randomize_parameters(*vae);  // N(0, 1/fan_in) weights, unit norms, zero biases
  const auto vae_path = work / "vae.safetensors";
  const auto vae_stage1_path = work / "vae-stage1.safetensors";
  if (fs::exists(vae_path)) {
    load_module(*vae, vae_path, "", "vae");
  } else {
    if (fs::exists(vae_stage1_path)) {
      load_module(*vae, vae_stage1_path, "", "vae");
    } else {
      VAETrainOptions options;
      options.steps = o.vae_steps;
      options.batch = o.vae_batch;
      options.crop = o.vae_crop;
      options.seed = o.seed + 1;
      const auto start = Clock::now();
      train_vae(vae, options,
                [&](int step, double loss) { log_line("vae", step, options.steps, loss, start); });
      save_module(*vae, vae_stage1_path, "", torch::kFloat32);
    }
    // Then the decoder alone on whole 512x512 pictures: trained on crops only,
    // its GroupNorm statistics differ from a whole picture's and colours shift
    // (blue on gray came out purple). The encoder, hence the latents, stay.
    VAETrainOptions options;
    options.steps = o.decoder_steps;
    options.batch = o.decoder_batch;
    options.crop = o.decoder_crop;
    options.lr = o.decoder_lr;
    options.decoder_only = true;
    options.bf16 = o.precision.autocast();
    options.seed = o.seed + 5;
    const auto start = Clock::now();
    train_vae(vae, options, [&](int step, double loss) {
      log_line("vae decoder", step, options.steps, loss, start);
    });
    save_module(*vae, vae_path, "", torch::kFloat32);
  }

  if (o.vae_only) {
    std::fprintf(stderr, "sdgen-train: VAE done (--vae-only)\n");
    return 0;
  }
  set_up_unet_stage(o, work);
  trained = work_architecture(work);  // with the sizes and context just fixed

  // 4. Latents of the training set.
  const auto data = training_latents(
      vae, work / "latents.safetensors", o.train_images, o.seed + 2,
      o.pair_layout == "halves" ? synth::PairLayout::kHalves : synth::PairLayout::kFree);
  const double scaling = latent_scaling_factor(data.latents);
  std::fprintf(stderr, "sdgen-train: %zu training latents, scaling_factor %.5f\n",
               data.captions.size(), scaling);
  arch.vae.scaling_factor = scaling;

  // 5. Text encoder + UNet.
  torch::manual_seed(o.seed + 3);
  CLIPTextModel text_encoder(arch.text);
  UNet2DConditionModel unet(arch.unet);
  randomize_parameters(*text_encoder);
  randomize_parameters(*unet);
  const auto text_path = work / "text_encoder.safetensors";
  const auto unet_path = work / "unet.safetensors";
  const auto base_checkpoint = work / "diffusion.ckpt";
  // Finished weights of a stage, when both files are there.
  auto load_finished = [&](const fs::path& text_file, const fs::path& unet_file) {
    if (!fs::exists(text_file) || !fs::exists(unet_file)) return false;
    load_module(*text_encoder, text_file, "", "text encoder");
    load_module(*unet, unet_file, "", "unet");
    return true;
  };
  // The step a stage's checkpoint reached (-1 = none yet).
  auto reached = [](const fs::path& checkpoint) {
    return fs::exists(checkpoint) ? diffusion_checkpoint_step(checkpoint.string()) : -1;
  };
  // The same for a stage whose checkpoint reached step `done`: a run naming
  // more steps continues the checkpoint instead (and replaces the weights).
  auto load_finished_run = [&](const fs::path& text_file, const fs::path& unet_file, int done,
                               int steps) {
    return (done < 0 || done >= steps) && load_finished(text_file, unet_file);
  };
  auto diffusion_options = [&](int steps, double lr, uint64_t seed, const fs::path& checkpoint) {
    return diffusion_run_options(steps, o.unet_batch, lr, torch::kCPU, o.precision, o.noise,
                                 o.stop_after, seed, checkpoint);
  };
  auto train = [&](const char* stage, const LatentSet& set, const DiffusionTrainOptions& options) {
    const auto start = Clock::now();
    train_diffusion(
        text_encoder, unet, *tokenizer, set, scaling, options,
        [&](int step, double loss) { log_line(stage, step, options.steps, loss, start); });
    // Stopped (also at the last step: the checkpoint is then what a whole run
    // leaves, and a later run with more --unet-steps continues it).
    if (o.stop_after > 0 && o.stop_after <= options.steps) {
      std::fprintf(stderr, "sdgen-train: stopped after step %d; run again to resume\n",
                   o.stop_after);
      return false;
    }
    return true;
  };
  if (o.refine_steps > 0) {
    // 5b. Second stage from the first stage's weights (its final EMA, or the
    // EMA of its checkpoint when it was stopped early), on new scenes whose
    // pairs straddle the picture's centre (synth::PairLayout::kHalves), with a
    // fresh optimizer and learning-rate schedule. Latents are scaled by the
    // first stage's factor, which the model has learnt.
    const auto refined_text = work / "text_encoder-refined.safetensors";
    const auto refined_unet = work / "unet-refined.safetensors";
    const auto refine_checkpoint = work / "refine.ckpt";
    const int refine_done = reached(refine_checkpoint);
    if (!load_finished_run(refined_text, refined_unet, refine_done, o.refine_steps)) {
      if (refine_done >= 0) {  // its weights replace the modules'
        std::fprintf(stderr, "sdgen-train: resuming the second stage at step %d\n", refine_done);
      } else if (!load_finished(text_path, unet_path)) {
        if (!fs::exists(base_checkpoint))
          throw Error("--refine-steps: train the first UNet stage first (no " +
                      base_checkpoint.string() + ")");
        const int step =
            load_diffusion_checkpoint(text_encoder, unet, base_checkpoint.string(), true);
        std::fprintf(stderr, "sdgen-train: refining the EMA weights of step %d\n", step);
      }
      const auto refine_data =
          training_latents(vae, work / "latents-halves.safetensors", o.refine_images, o.seed + 6,
                           synth::PairLayout::kHalves);
      if (!train("refine", refine_data,
                 diffusion_options(o.refine_steps, o.refine_lr, o.seed + 7, refine_checkpoint)))
        return 0;
      save_module(*text_encoder, refined_text, "", torch::kFloat32);
      save_module(*unet, refined_unet, "", torch::kFloat32);
    }
  } else if (!load_finished_run(text_path, unet_path, reached(base_checkpoint), o.unet_steps)) {
    if (!train("unet", data,
               diffusion_options(o.unet_steps, o.unet_lr, o.seed + 4, base_checkpoint)))
      return 0;
    save_module(*text_encoder, text_path, "", torch::kFloat32);
    save_module(*unet, unet_path, "", torch::kFloat32);
  }

  // 6. The diffusers folder (fp16 weights).
  write_model_folder(out.string(), arch, text_encoder, unet, vae, tokenizer_dir.string());
  std::fprintf(stderr, "sdgen-train: wrote %s in %.0f s\n", out.c_str(), since(started));
  return 0;
}

}  // namespace sdgen::train::cli
