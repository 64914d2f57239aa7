// sdgen-train: trains sdgen's default model on the synthetic world and judges it.
//
//   sdgen-train all  --out models/default --work build/train [--seed 0] [--threads N] ...
//       The whole recipe (src/train/train.h), each stage skipped when its
//       result is already in the work folder (so an interrupted run resumes):
//       captions -> SentencePiece tokenizer -> VAE -> latents -> text encoder +
//       UNet [-> second stage on centred pairs, --refine-steps] -> fp16
//       diffusers folder in --out.
//   sdgen-train finetune --model DIR --work DIR --out DIR [--steps 4000] [--lr 1.5e-4] ...
//       More training of a model folder's text encoder and UNet on fresh scenes
//       (resumable; the EMA of its checkpoint is written to --out).
//   sdgen-train render --out DIR [--count N] [--seed S]
//       Training renders with their captions (PNG, caption in the file name list).
//   sdgen-train export --work DIR --out DIR [--live] [--checkpoint refine.ckpt]
//       The model folder from the current training checkpoint (EMA weights).
//   sdgen-train eval-vae --vae FILE --work DIR [--count N] [--save DIR]
//       Checker pass rate of VAE reconstructions of training renders.
//   sdgen-train eval --model DIR [--seeds 20] [--prompts 10] [--steps 20] [--save DIR]
//                    [--training-prompts | --one-shape]
//       Generates each held-out prompt (or training / one-shape captions) with
//       each seed at 512x512 and runs the checker (synth_world.h); prints the
//       pass rate.

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "sdgen/device_info.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/random_model.h"
#include "sdgen/runtime.h"
#include "sdgen/safetensors.h"
#include "sdgen/sha256.h"
#include "sdgen/tokenizer.h"
#include "sdgen/weights.h"
#include "synth/synth_world.h"
#include "train/train.h"

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void write_text(const fs::path& path, const std::string& text) {
  sdgen::train::write_text_file(path.string(), text);
}

// The noise and caption options of a text encoder + UNet run, the same flags in `all`
// (its UNet stages) and `finetune`.
struct NoiseOptions {
  double offset = 0.15;
  double high_noise_share = 0.0;  // of each batch, drawn from t >= 500
  double pyramid = 0.0;           // discount of the multi-resolution noise
  double swap_pairs = 0.0;        // chance a pair caption is said the other way round
};

void add_noise_options(CLI::App* cmd, NoiseOptions& noise) {
  cmd->add_option("--noise-offset", noise.offset,
                  "offset noise of the UNet training (0 = plain Gaussian noise)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--high-noise-share", noise.high_noise_share,
                  "share of each UNet batch with its timestep drawn from the noisier half of "
                  "the schedule (0 = uniform)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--pyramid-noise", noise.pyramid,
                  "multi-resolution noise of the UNet training: the weight of each coarser level "
                  "is this times the finer one's (0 = off, below 1)")
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_option("--swap-pairs", noise.swap_pairs,
                  "chance that a two-shape caption is said the other way round at a UNet step "
                  "(\"a above b\" as \"b below a\", never into a held-out caption; 0 = off)")
      ->check(CLI::Range(0.0, 1.0));
}

// Training precision: bf16 autocast (fp32 weights, optimizer and EMA) on a
// GPU, where the CPU computes bf16 natively (avx512_bf16, AMX) or when asked for; else
// fp32, since libtorch emulates bf16 on other CPUs: on an AVX2-only EPYC two
// bf16 fine-tuning runs at one thread each did not reach step 50 of batch 32
// in 10 minutes, while one fp32 run at two threads takes 3.9 s per step.
struct Precision {
  bool fp32 = false;  // --fp32
  bool bf16 = false;  // --bf16
  bool autocast(const torch::Device& device = torch::kCPU) const {
    return !fp32 && (bf16 || device.is_cuda() || sdgen::cpu_has_native_bf16());
  }
  const char* name(const torch::Device& device = torch::kCPU) const {
    return autocast(device) ? "bf16 autocast" : "fp32";
  }
};

void add_precision_flags(CLI::App* cmd, Precision& precision, const std::string& what) {
  auto* fp32 = cmd->add_flag("--fp32", precision.fp32, "train " + what + " in fp32");
  cmd->add_flag("--bf16", precision.bf16,
                "train " + what +
                    " under bf16 autocast, fp32 weights (default: bf16 autocast on a GPU and "
                    "where the CPU has native bf16, else fp32)")
      ->excludes(fp32);
}

// What `all`'s UNet stages (on the CPU) and `finetune` set alike in a training
// run's options; the precision follows `device`.
sdgen::train::DiffusionTrainOptions diffusion_run_options(
    int steps, int batch, double lr, const torch::Device& device, const Precision& precision,
    const NoiseOptions& noise, int stop_after, uint64_t seed, const fs::path& checkpoint) {
  sdgen::train::DiffusionTrainOptions options;
  options.steps = steps;
  options.batch = batch;
  options.lr = lr;
  options.device = device;
  options.bf16 = precision.autocast(device);
  options.noise_offset = noise.offset;
  options.high_noise_share = noise.high_noise_share;
  options.pyramid_noise = noise.pyramid;
  options.swap_pairs = noise.swap_pairs;
  options.stop_after = stop_after;
  options.seed = seed;
  options.checkpoint = checkpoint.string();
  return options;
}

struct AllOptions {
  std::string out = "models/default";
  std::string work = "build/train";
  uint64_t seed = 0;
  int threads = 0;
  int captions = 20000;
  int vocab_size = 200;
  int vae_steps = 1500;
  int vae_batch = 8;
  int vae_crop = 96;
  int decoder_steps = 500;  // second VAE stage: decoder only, on whole pictures
  int decoder_batch = 2;
  int decoder_crop = 512;
  double decoder_lr = 1e-4;
  int train_images = 4000;
  std::string pair_layout = "free";  // of the first UNet stage's scenes: free or halves
  int unet_steps = 7500;
  int unet_batch = 32;
  double unet_lr = 1e-3;
  NoiseOptions noise;   // of the UNet stages
  Precision precision;  // of the decoder and UNet stages
  // Second UNet stage (0 = none): fine-tunes the first stage's weights on
  // scenes with PairLayout::kHalves pairs.
  int refine_steps = 0;
  int refine_images = 8000;
  double refine_lr = 1.5e-4;
  int stop_after = 0;
  bool vae_only = false;
  // Fixed when the UNet stage is set up (0 = the work folder's, else the default).
  int text_layers = 0;
  int text_width = 0;
  int attention_levels = 0;
  int context = 0;  // tokens per prompt (the tokenizer's model_max_length)
};

void log_line(const std::string& stage, int step, int total, double loss, Clock::time_point start) {
  std::fprintf(stderr, "[%s] step %d/%d loss %.5f  %.0f s\n", stage.c_str(), step, total, loss,
               since(start));
}

// Stage 2: the SentencePiece tokenizer, trained by the sdgen-spm tool beside
// this one (libsentencepiece cannot share a process with libtorch).
void train_tokenizer(const fs::path& captions, const fs::path& dir, int vocab_size,
                     const std::string& self) {
  const auto spm = fs::path(self).parent_path() / "sdgen-spm";
  if (!fs::exists(spm))
    throw sdgen::Error("sdgen-spm not found beside sdgen-train: " + spm.string());
  const std::string command = "\"" + spm.string() + "\" train --input \"" + captions.string() +
                              "\" --out \"" + dir.string() + "\" --vocab-size " +
                              std::to_string(vocab_size) + " --max-length 77";
  if (std::system(command.c_str()) != 0)
    throw sdgen::Error("tokenizer training failed: " + command);
}

void save_module(torch::nn::Module& module, const fs::path& path, const std::string& prefix,
                 torch::ScalarType dtype) {
  fs::create_directories(path.parent_path());
  sdgen::write_safetensors(path.string(), sdgen::named_tensors(module, prefix, dtype),
                           {{"format", "pt"}});
}

void load_module(torch::nn::Module& module, const fs::path& path, const std::string& prefix,
                 const std::string& what) {
  sdgen::SafeTensorsFile file(path.string());
  sdgen::load_weights(module, sdgen::tensors_with_prefix(file, prefix), what);
}

sdgen::train::LatentSet load_latents(const fs::path& path) {
  sdgen::SafeTensorsFile file(path.string());
  sdgen::train::LatentSet data;
  data.latents = file.tensor("latents").clone();
  std::istringstream lines(file.metadata().at("captions"));
  for (std::string line; std::getline(lines, line);) data.captions.push_back(line);
  return data;
}

// Latents of `count` training scenes from `path`, encoded and saved there first
// when missing.
sdgen::train::LatentSet training_latents(sdgen::AutoencoderKL& vae, const fs::path& path, int count,
                                         uint64_t seed, sdgen::synth::PairLayout layout,
                                         const torch::Device& device = torch::kCPU) {
  if (fs::exists(path)) return load_latents(path);
  const auto start = Clock::now();
  auto data = sdgen::train::encode_training_set(
      vae, count, 512, seed,
      [&](int done) {
        if (done % 400 == 0)
          std::fprintf(stderr, "[latents] %d/%d  %.0f s\n", done, count, since(start));
      },
      layout, device);
  std::string joined;
  for (const auto& caption : data.captions) joined += caption + "\n";
  sdgen::write_safetensors(path.string(), {{"latents", data.latents}}, {{"captions", joined}});
  return data;
}

struct Trained {
  std::unique_ptr<sdgen::Tokenizer> tokenizer;
  sdgen::train::DemoArchitecture arch;
};

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw sdgen::Error("cannot read " + path.string());
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw sdgen::Error(path.string() + ": " + e.what());
  }
}

// The sizes of a work folder's text encoder and UNet: its architecture.json
// (written when its UNet stage is set up), else the defaults (the shipped
// model's; folders from before the file existed).
sdgen::train::DemoSizes work_sizes(const fs::path& work) {
  const auto path = work / "architecture.json";
  if (!fs::exists(path)) return {};
  try {
    return sdgen::train::DemoSizes::from_json(read_json(path));
  } catch (const sdgen::Error& e) {
    throw sdgen::Error(path.string() + ": " + e.what());
  }
}

// The tokenizer of a work folder and the architecture sized for it.
Trained work_architecture(const fs::path& work) {
  Trained t;
  t.tokenizer = sdgen::tokenizer_from_path((work / "tokenizer").string(), {});
  auto* sp = dynamic_cast<sdgen::SentencePieceTokenizer*>(t.tokenizer.get());
  if (!sp) throw sdgen::Error("the trained tokenizer is not a SentencePiece model");
  t.arch = sdgen::train::demo_architecture(
      static_cast<int>(sp->vocab_size()), static_cast<int>(sp->bos_id()),
      static_cast<int>(sp->eos_id()), static_cast<int>(sp->pad_id()), work_sizes(work));
  return t;
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
      throw sdgen::Error(std::string(option) + " " + std::to_string(given) + " differs from the " +
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
      throw sdgen::Error("--context must be 8-77 (the text encoder has 77 positions), got " +
                         std::to_string(o.context));
    config["model_max_length"] = o.context;
    write_text(tokenizer_config, config.dump(2));
  }
  write_text(sizes_path, sizes.to_json().dump(2));
}

int run_all(const AllOptions& o, const std::string& self) {
  const auto started = Clock::now();
  const fs::path work(o.work), out(o.out);
  fs::create_directories(work);
  const int threads = sdgen::init_cpu_runtime(o.threads);
  std::fprintf(stderr, "sdgen-train: %d threads, %s, work folder %s\n", threads, o.precision.name(),
               work.c_str());

  // 1. Captions of training scenes (never a held-out pair).
  const auto captions_path = work / "captions.txt";
  if (!fs::exists(captions_path)) {
    std::mt19937_64 rng(o.seed);
    std::string text;
    for (int i = 0; i < o.captions; ++i) text += sdgen::synth::random_spec(rng).caption() + "\n";
    write_text(captions_path, text);
  }
  // 2. Tokenizer.
  const auto tokenizer_dir = work / "tokenizer";
  if (sdgen::SentencePieceTokenizer::find_model(tokenizer_dir.string()).empty()) {
    train_tokenizer(captions_path, tokenizer_dir, o.vocab_size, self);
  }
  auto trained = work_architecture(work);
  auto& tokenizer = trained.tokenizer;
  auto& arch = trained.arch;

  // 3. VAE.
  torch::manual_seed(o.seed);
  sdgen::AutoencoderKL vae(arch.vae);
  sdgen::randomize_parameters(*vae);  // N(0, 1/fan_in) weights, unit norms, zero biases
  const auto vae_path = work / "vae.safetensors";
  const auto vae_stage1_path = work / "vae-stage1.safetensors";
  if (fs::exists(vae_path)) {
    load_module(*vae, vae_path, "", "vae");
  } else {
    if (fs::exists(vae_stage1_path)) {
      load_module(*vae, vae_stage1_path, "", "vae");
    } else {
      sdgen::train::VAETrainOptions options;
      options.steps = o.vae_steps;
      options.batch = o.vae_batch;
      options.crop = o.vae_crop;
      options.seed = o.seed + 1;
      const auto start = Clock::now();
      sdgen::train::train_vae(vae, options, [&](int step, double loss) {
        log_line("vae", step, options.steps, loss, start);
      });
      save_module(*vae, vae_stage1_path, "", torch::kFloat32);
    }
    // Then the decoder alone on whole 512x512 pictures: trained on crops only,
    // its GroupNorm statistics differ from a whole picture's and colours shift
    // (blue on gray came out purple). The encoder, hence the latents, stay.
    sdgen::train::VAETrainOptions options;
    options.steps = o.decoder_steps;
    options.batch = o.decoder_batch;
    options.crop = o.decoder_crop;
    options.lr = o.decoder_lr;
    options.decoder_only = true;
    options.bf16 = o.precision.autocast();
    options.seed = o.seed + 5;
    const auto start = Clock::now();
    sdgen::train::train_vae(vae, options, [&](int step, double loss) {
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
  const auto data = training_latents(vae, work / "latents.safetensors", o.train_images, o.seed + 2,
                                     o.pair_layout == "halves" ? sdgen::synth::PairLayout::kHalves
                                                               : sdgen::synth::PairLayout::kFree);
  const double scaling = sdgen::train::latent_scaling_factor(data.latents);
  std::fprintf(stderr, "sdgen-train: %zu training latents, scaling_factor %.5f\n",
               data.captions.size(), scaling);
  arch.vae.scaling_factor = scaling;

  // 5. Text encoder + UNet.
  torch::manual_seed(o.seed + 3);
  sdgen::CLIPTextModel text_encoder(arch.text);
  sdgen::UNet2DConditionModel unet(arch.unet);
  sdgen::randomize_parameters(*text_encoder);
  sdgen::randomize_parameters(*unet);
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
    return fs::exists(checkpoint) ? sdgen::train::diffusion_checkpoint_step(checkpoint.string())
                                  : -1;
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
  auto train = [&](const char* stage, const sdgen::train::LatentSet& set,
                   const sdgen::train::DiffusionTrainOptions& options) {
    const auto start = Clock::now();
    sdgen::train::train_diffusion(
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
          throw sdgen::Error("--refine-steps: train the first UNet stage first (no " +
                             base_checkpoint.string() + ")");
        const int step = sdgen::train::load_diffusion_checkpoint(text_encoder, unet,
                                                                 base_checkpoint.string(), true);
        std::fprintf(stderr, "sdgen-train: refining the EMA weights of step %d\n", step);
      }
      const auto refine_data =
          training_latents(vae, work / "latents-halves.safetensors", o.refine_images, o.seed + 6,
                           sdgen::synth::PairLayout::kHalves);
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
  sdgen::train::write_model_folder(out.string(), arch, text_encoder, unet, vae,
                                   tokenizer_dir.string());
  std::fprintf(stderr, "sdgen-train: wrote %s in %.0f s\n", out.c_str(), since(started));
  return 0;
}

// A work folder's record of what its run is (first line of `path`): written
// when missing, else it must equal `value` or the run is refused with
// `mismatch(recorded)` and the file's name.
void record_or_check(const fs::path& path, const std::string& value,
                     const std::function<std::string(const std::string&)>& mismatch) {
  if (!fs::exists(path)) {
    write_text(path, value + "\n");
    return;
  }
  std::ifstream in(path);
  std::string recorded;
  std::getline(in, recorded);
  if (recorded != value) throw sdgen::Error(mismatch(recorded) + " (" + path.string() + ")");
}

struct FinetuneOptions {
  std::string model;  // the model folder training starts from
  std::string work;
  std::string out;
  uint64_t seed = 0;
  int threads = 0;
  int steps = 4000;
  int batch = 32;
  double lr = 1.5e-4;
  int warmup = 200;
  int images = 4000;                   // 512x512 scenes encoded with the model's VAE
  std::string pair_layout = "halves";  // of those scenes: free or halves
  NoiseOptions noise;
  Precision precision;
  int stop_after = 0;
  std::string device = "auto";
  std::string prediction;    // epsilon | v_prediction; "" = the model folder's
  std::string terminal_snr;  // sd | zero; "" = the model folder's
};

// More training of a finished model folder (text encoder + UNet, the VAE and
// tokenizer frozen): what lets a recipe go on from the model it shipped when
// the earlier stages' work folder is gone. Fresh scenes encoded with the
// folder's VAE and scaled by its scaling factor, a fresh AdamW, the EMA
// started from the folder's weights. Resumable like the other stages; the
// work folder remembers the weights it began from and refuses other ones.
int run_finetune(const FinetuneOptions& o) {
  const auto started = Clock::now();
  if (fs::exists(o.out) && fs::exists(o.model) && fs::equivalent(o.out, o.model))
    throw sdgen::Error("--out must be another folder than --model (" + o.model + ")");
  const auto device = sdgen::device_from_name(o.device);
  const fs::path work(o.work);
  const int threads = sdgen::init_cpu_runtime(o.threads);
  const auto where = device.is_cpu() ? std::to_string(threads) + " threads"
                                     : device.str() + " (" + sdgen::device_name(device) + ")";
  auto model = sdgen::train::load_trainable_model(o.model);
  // What the UNet learns to predict, on which schedule: the folder's unless
  // told (an epsilon model can be taught v on the zero-SNR schedule).
  sdgen::train::DiffusionTrainOptions target_options;
  target_options.prediction_type =
      o.prediction.empty() ? model.scheduler.prediction_type : o.prediction;
  target_options.zero_terminal_snr =
      o.terminal_snr.empty() ? model.scheduler.rescale_betas_zero_snr : o.terminal_snr == "zero";
  const auto scheduler = sdgen::train::trained_scheduler_config(target_options);  // or throws
  fs::create_directories(work);
  // A checkpoint resumed with another target would mix two trainings.
  const auto target = target_options.prediction_type +
                      (target_options.zero_terminal_snr ? ", zero" : ", SD1.5's") + " terminal SNR";
  record_or_check(work / "finetune-target.txt", target, [&](const std::string& recorded) {
    return work.string() + " trains " + recorded + ", not " + target;
  });
  const auto source = sdgen::sha256_file_hex(
      (fs::path(o.model) / "unet" / "diffusion_pytorch_model.safetensors").string());
  record_or_check(work / "finetune-source.txt", source, [&](const std::string&) {
    return work.string() + " was begun from a model with other UNet weights than " + o.model;
  });
  const double scaling = model.arch.vae.scaling_factor;
  std::fprintf(stderr, "sdgen-train: %s, %s, fine-tuning %s (scaling_factor %.5f; %s) in %s\n",
               where.c_str(), o.precision.name(device), o.model.c_str(), scaling, target.c_str(),
               work.c_str());
  const auto data = training_latents(model.vae, work / "latents.safetensors", o.images, o.seed + 1,
                                     o.pair_layout == "halves" ? sdgen::synth::PairLayout::kHalves
                                                               : sdgen::synth::PairLayout::kFree,
                                     device);
  const auto checkpoint = work / "finetune.ckpt";
  auto options = diffusion_run_options(o.steps, o.batch, o.lr, device, o.precision, o.noise,
                                       o.stop_after, o.seed + 2, checkpoint);
  options.warmup = o.warmup;
  options.prediction_type = target_options.prediction_type;
  options.zero_terminal_snr = target_options.zero_terminal_snr;
  const auto start = Clock::now();
  sdgen::train::train_diffusion(
      model.text_encoder, model.unet, *model.tokenizer, data, scaling, options,
      [&](int step, double loss) { log_line("finetune", step, options.steps, loss, start); });
  // The EMA of the checkpoint's step, also when the run stopped early (the
  // modules then hold the live weights).
  const int step = sdgen::train::load_diffusion_checkpoint(model.text_encoder, model.unet,
                                                           checkpoint.string(), true);
  sdgen::train::write_model_folder(o.out, model.arch, model.text_encoder, model.unet, model.vae,
                                   model.tokenizer_dir, scheduler);
  std::fprintf(stderr, "sdgen-train: wrote %s (EMA weights of step %d of %d) in %.0f s%s\n",
               o.out.c_str(), step, o.steps, since(started),
               step < o.steps ? "; run again to resume" : "");
  return 0;
}

int run_render(const std::string& out, int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  fs::create_directories(out);
  std::string list;
  for (int i = 0; i < count; ++i) {
    const auto spec = sdgen::synth::random_spec(rng);
    const auto name = "render_" + std::to_string(i) + ".png";
    sdgen::write_png((fs::path(out) / name).string(),
                     sdgen::synth::render(sdgen::synth::place_scene(spec, 512, rng)));
    list += name + "\t" + spec.caption() + "\n";
  }
  write_text(fs::path(out) / "captions.tsv", list);
  return 0;
}

// The model folder from a work folder's current training checkpoint (EMA or
// live weights), to judge a run before it ends.
int run_export(const std::string& work_dir, const std::string& out_dir, bool live,
               const std::string& checkpoint) {
  sdgen::init_cpu_runtime(0);
  const fs::path work(work_dir);
  auto trained = work_architecture(work);
  trained.arch.vae.scaling_factor =
      sdgen::train::latent_scaling_factor(load_latents(work / "latents.safetensors").latents);
  sdgen::AutoencoderKL vae(trained.arch.vae);
  sdgen::CLIPTextModel text_encoder(trained.arch.text);
  sdgen::UNet2DConditionModel unet(trained.arch.unet);
  load_module(*vae, work / "vae.safetensors", "", "vae");
  const int step = sdgen::train::load_diffusion_checkpoint(text_encoder, unet,
                                                           (work / checkpoint).string(), !live);
  sdgen::train::write_model_folder(out_dir, trained.arch, text_encoder, unet, vae,
                                   (work / "tokenizer").string());
  std::fprintf(stderr, "sdgen-train: wrote %s (%s weights of step %d)\n", out_dir.c_str(),
               live ? "live" : "EMA", step);
  return 0;
}

// The VAE alone: training renders encoded and decoded must still pass the
// checker, or no UNet can (the ceiling of the semantic test).
int run_eval_vae(const std::string& vae_file, const std::string& work_dir, int count,
                 const std::string& save) {
  sdgen::init_cpu_runtime(0);
  torch::NoGradGuard no_grad;
  auto trained = work_architecture(work_dir);
  sdgen::AutoencoderKL vae(trained.arch.vae);
  load_module(*vae, vae_file, "", "vae");
  vae->eval();
  if (!save.empty()) fs::create_directories(save);
  std::mt19937_64 rng(777);
  int passed = 0;
  for (int i = 0; i < count; ++i) {
    const auto spec = sdgen::synth::random_spec(rng);
    const auto image = sdgen::synth::render(sdgen::synth::place_scene(spec, 512, rng));
    const auto input = sdgen::train::to_model_input(image.unsqueeze(0));
    const auto decoded = sdgen::to_uint8_images(vae->decode(vae->encode(input).mean))[0];
    const auto check = sdgen::synth::check_image(spec, decoded);
    passed += check.pass ? 1 : 0;
    if (!check.pass)
      std::fprintf(stderr, "  fail: \"%s\": %s\n", spec.caption().c_str(), check.reason.c_str());
    if (!save.empty())
      sdgen::write_png((fs::path(save) / ("vae_" + std::to_string(i) + ".png")).string(),
                       torch::cat({image, decoded}, 1));
  }
  std::printf("VAE reconstructions passing the checker: %d/%d\n", passed, count);
  return 0;
}

struct EvalOptions {
  std::string model;
  int seeds = 20;
  int prompts = 10;
  int steps = 20;
  double cfg = 7.5;
  double guidance_rescale = -1;  // the model's default
  std::string sampler = "ddim";
  std::string save;
  std::string dtype = "auto";
  int threads = 0;
  bool training_prompts = false;
  bool one_shape = false;
  bool reversed_too = false;
};

int run_eval(const EvalOptions& o) {
  sdgen::init_cpu_runtime(o.threads);
  sdgen::LoadOptions load;
  load.model_path = o.model;
  load.dtype = sdgen::dtype_from_name(o.dtype, sdgen::default_dtype(torch::kCPU));
  auto model = sdgen::load_model(load);
  sdgen::Pipeline pipeline(model);
  // As sdgen: the model folder's guidance_rescale unless one is given.
  const double rescale =
      o.guidance_rescale >= 0 ? o.guidance_rescale : model.default_guidance_rescale.value_or(0.0);
  std::vector<sdgen::synth::SceneSpec> specs;
  if (o.one_shape) {
    // Captions of one shape (their combinations are all in the training set).
    std::mt19937_64 rng(4242);
    while (static_cast<int>(specs.size()) < o.prompts) {
      auto spec = sdgen::synth::random_spec(rng);
      if (spec.objects.size() == 1) specs.push_back(std::move(spec));
    }
  } else if (o.training_prompts) {
    std::mt19937_64 rng(12345);
    for (int i = 0; i < o.prompts; ++i) specs.push_back(sdgen::synth::random_spec(rng));
  } else {
    specs = sdgen::synth::held_out_specs(o.prompts, o.reversed_too);
  }
  if (!o.save.empty()) fs::create_directories(o.save);
  int passed = 0, total = 0;
  std::array<int, sdgen::synth::kCheckFailureKinds> failures{};
  double seconds = 0;
  for (size_t p = 0; p < specs.size(); ++p) {
    int prompt_passed = 0;
    for (int seed = 0; seed < o.seeds; ++seed) {
      sdgen::GenerationRequest request;
      request.prompt = specs[p].caption();
      request.steps = o.steps;
      request.cfg_scale = o.cfg;
      request.guidance_rescale = rescale;
      request.seed = static_cast<uint64_t>(seed);
      request.sampler = sdgen::parse_sampler(o.sampler);
      const auto start = Clock::now();
      const auto result = pipeline.generate(request);
      seconds += since(start);
      const auto image = result.images_u8[0];
      const auto check = sdgen::synth::check_image(specs[p], image);
      ++total;
      passed += check.pass ? 1 : 0;
      prompt_passed += check.pass ? 1 : 0;
      ++failures[static_cast<size_t>(check.failure)];
      if (!o.save.empty()) {
        sdgen::write_png(
            (fs::path(o.save) / ("p" + std::to_string(p) + "_s" + std::to_string(seed) +
                                 (check.pass ? "_pass" : "_fail") + ".png"))
                .string(),
            image);
      }
      if (!check.pass) {
        std::fprintf(stderr, "  fail: \"%s\" seed %d: %s\n", request.prompt.c_str(), seed,
                     check.reason.c_str());
      }
    }
    std::printf("%-60s %2d/%d\n", specs[p].caption().c_str(), prompt_passed, o.seeds);
    std::fflush(stdout);
  }
  char rescaled[48] = "";
  if (rescale > 0) std::snprintf(rescaled, sizeof rescaled, ", guidance rescale %.2f", rescale);
  std::printf("passed %d/%d = %.1f%%  (%d steps, %s, cfg %.1f%s, %.2f s per image)\n", passed,
              total, 100.0 * passed / std::max(1, total), o.steps, o.sampler.c_str(), o.cfg,
              rescaled, seconds / std::max(1, total));
  // The first test each failed picture failed, by kind.
  std::string summary;
  for (int kind = 1; kind < sdgen::synth::kCheckFailureKinds; ++kind) {
    if (failures[static_cast<size_t>(kind)] == 0) continue;
    summary += (summary.empty() ? "" : ", ") +
               std::string(sdgen::synth::check_failure_name(
                   static_cast<sdgen::synth::CheckFailure>(kind))) +
               " " + std::to_string(failures[static_cast<size_t>(kind)]);
  }
  if (!summary.empty()) std::printf("failed: %s\n", summary.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sdgen-train: train and judge sdgen's default model"};
  app.option_defaults()->always_capture_default();  // --help shows every default
  app.require_subcommand(1);
  AllOptions all;
  auto* all_cmd = app.add_subcommand("all", "the whole training recipe");
  all_cmd->add_option("-o,--out", all.out, "model folder to write (diffusers layout)");
  all_cmd->add_option("--work", all.work, "folder for intermediate results (resumable)");
  all_cmd->add_option("--seed", all.seed);
  all_cmd->add_option("--threads", all.threads, "0 = all cores");
  all_cmd->add_option("--captions", all.captions, "captions the tokenizer is trained on");
  all_cmd->add_option("--vocab-size", all.vocab_size);
  all_cmd->add_option("--vae-steps", all.vae_steps);
  all_cmd->add_option("--vae-batch", all.vae_batch);
  all_cmd->add_option("--vae-crop", all.vae_crop);
  all_cmd->add_option("--decoder-steps", all.decoder_steps);
  all_cmd->add_option("--decoder-batch", all.decoder_batch);
  all_cmd->add_option("--decoder-crop", all.decoder_crop);
  all_cmd->add_option("--decoder-lr", all.decoder_lr);
  all_cmd->add_option("--train-images", all.train_images, "512x512 scenes encoded for the UNet");
  all_cmd
      ->add_option("--pair-layout", all.pair_layout,
                   "where the pairs of the --train-images scenes sit: free, or halves (straddling "
                   "the centre, as the second stage's)")
      ->check(CLI::IsMember({"free", "halves"}));
  all_cmd->add_option("--unet-steps", all.unet_steps);
  all_cmd->add_option("--unet-batch", all.unet_batch);
  all_cmd->add_option("--unet-lr", all.unet_lr);
  add_noise_options(all_cmd, all.noise);
  add_precision_flags(all_cmd, all.precision, "the decoder stage and the UNet stages");
  all_cmd->add_option("--refine-steps", all.refine_steps,
                      "second UNet stage on pairs that straddle the centre (0 = none)");
  all_cmd->add_option("--refine-images", all.refine_images, "512x512 scenes of the second stage");
  all_cmd->add_option("--refine-lr", all.refine_lr);
  all_cmd->add_flag("--vae-only", all.vae_only, "stop after the VAE stages");
  all_cmd->add_option("--text-layers", all.text_layers,
                      "text transformer layers (0 = the work folder's, else 2); like the next "
                      "three, fixed in the work folder when its UNet stage begins");
  all_cmd->add_option("--text-width", all.text_width,
                      "text hidden size (0 = the folder's, else 64)");
  all_cmd->add_option("--attention-levels", all.attention_levels,
                      "coarsest UNet levels with cross-attention, of 4 (0 = the folder's, else 2)");
  all_cmd->add_option("--context", all.context,
                      "tokens per prompt, model_max_length (0 = the folder's, else 77)");
  all_cmd->add_option("--stop-after", all.stop_after,
                      "stop the UNet stage (with --refine-steps: the second stage) after this step "
                      "and keep only its checkpoint (a later run resumes it, also with more "
                      "--unet-steps)");

  std::string render_out;
  int render_count = 16;
  uint64_t render_seed = 0;
  FinetuneOptions finetune;
  auto* finetune_cmd =
      app.add_subcommand("finetune", "more training of a model folder's text encoder and UNet");
  finetune_cmd->add_option("-m,--model", finetune.model, "model folder to start from")->required();
  finetune_cmd->add_option("--work", finetune.work, "folder for latents and the checkpoint")
      ->required();
  finetune_cmd->add_option("-o,--out", finetune.out, "model folder to write")->required();
  finetune_cmd->add_option("--seed", finetune.seed);
  finetune_cmd->add_option("--threads", finetune.threads, "0 = all cores");
  finetune_cmd->add_option("--steps", finetune.steps)->check(CLI::Range(1, 10000000));
  finetune_cmd->add_option("--batch", finetune.batch)->check(CLI::Range(1, 4096));
  finetune_cmd->add_option("--lr", finetune.lr)->check(CLI::Range(1e-8, 1.0));
  finetune_cmd->add_option("--warmup", finetune.warmup)->check(CLI::Range(0, 10000000));
  finetune_cmd->add_option("--images", finetune.images, "512x512 scenes to train on")
      ->check(CLI::Range(1, 10000000));
  finetune_cmd->add_option("--pair-layout", finetune.pair_layout)
      ->check(CLI::IsMember({"free", "halves"}));
  add_noise_options(finetune_cmd, finetune.noise);
  finetune_cmd
      ->add_option("--prediction", finetune.prediction,
                   "what the UNet learns to predict: epsilon or v_prediction (default: what the "
                   "model folder's scheduler config says)")
      ->check(CLI::IsMember({"epsilon", "v_prediction"}));
  finetune_cmd
      ->add_option("--terminal-snr", finetune.terminal_snr,
                   "the noise schedule: sd (SD1.5's, a trace of the picture left at t = 999) or "
                   "zero (rescaled to zero SNR there, Lin et al. 2023; needs v_prediction; "
                   "default: the model folder's)")
      ->check(CLI::IsMember({"sd", "zero"}));
  add_precision_flags(finetune_cmd, finetune.precision, "the text encoder and UNet");
  finetune_cmd->add_option("--device", finetune.device,
                           "auto (the first GPU where CUDA is available, else the CPU), cpu, "
                           "cuda or cuda:N: where the scenes are encoded and the text encoder "
                           "and UNet train (data, noise and timesteps are drawn on the CPU)");
  finetune_cmd
      ->add_option("--stop-after", finetune.stop_after,
                   "stop after this step (the checkpoint's EMA is written; run again "
                   "to resume)")
      ->check(CLI::NonNegativeNumber);

  auto* render_cmd = app.add_subcommand("render", "write training renders and captions");
  render_cmd->add_option("-o,--out", render_out)->required();
  render_cmd->add_option("--count", render_count);
  render_cmd->add_option("--seed", render_seed);

  std::string export_work, export_out, export_checkpoint = "diffusion.ckpt";
  bool export_live = false;
  auto* export_cmd = app.add_subcommand("export", "model folder from a training checkpoint");
  export_cmd->add_option("--work", export_work)->required();
  export_cmd->add_option("-o,--out", export_out)->required();
  export_cmd->add_flag("--live", export_live, "live weights instead of the EMA");
  export_cmd->add_option("--checkpoint", export_checkpoint,
                         "checkpoint in the work folder (refine.ckpt: the second UNet stage)");

  std::string vae_file, vae_work, vae_save;
  int vae_count = 50;
  auto* eval_vae_cmd = app.add_subcommand("eval-vae", "checker pass rate of VAE reconstructions");
  eval_vae_cmd->add_option("--vae", vae_file)->required();
  eval_vae_cmd->add_option("--work", vae_work, "work folder (for the tokenizer)")->required();
  eval_vae_cmd->add_option("--count", vae_count);
  eval_vae_cmd->add_option("--save", vae_save, "folder for input|reconstruction pictures");

  EvalOptions eval;
  auto* eval_cmd = app.add_subcommand("eval", "semantic pass rate on held-out prompts");
  eval_cmd->add_option("-m,--model", eval.model)->required();
  eval_cmd->add_option("--seeds", eval.seeds);
  eval_cmd->add_option("--prompts", eval.prompts);
  eval_cmd->add_option("--steps", eval.steps);
  eval_cmd->add_option("--cfg", eval.cfg);
  eval_cmd
      ->add_option("--guidance-rescale", eval.guidance_rescale,
                   "diffusers' guidance_rescale, 0 (off) to 1 (default: the model "
                   "folder's, as sdgen)")
      ->check(CLI::Range(0.0, 1.0));
  eval_cmd->add_option("--sampler", eval.sampler);
  eval_cmd->add_option("--dtype", eval.dtype, "auto (sdgen's CPU default), fp32 or bf16");
  eval_cmd->add_option("--save", eval.save, "folder for the generated images");
  eval_cmd->add_option("--threads", eval.threads);
  eval_cmd->add_flag("--training-prompts", eval.training_prompts,
                     "judge random training prompts instead of held-out ones");
  eval_cmd->add_flag("--one-shape", eval.one_shape, "judge one-shape training captions");
  eval_cmd->add_flag(
      "--reversed-held-out", eval.reversed_too,
      "only held-out prompts whose reversed caption (the same picture said the other "
      "way round) is held out too");
  CLI11_PARSE(app, argc, argv);
  try {
    if (all_cmd->parsed()) return run_all(all, argv[0]);
    if (finetune_cmd->parsed()) return run_finetune(finetune);
    if (render_cmd->parsed()) return run_render(render_out, render_count, render_seed);
    if (eval_cmd->parsed()) return run_eval(eval);
    if (export_cmd->parsed())
      return run_export(export_work, export_out, export_live, export_checkpoint);
    if (eval_vae_cmd->parsed()) return run_eval_vae(vae_file, vae_work, vae_count, vae_save);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sdgen-train: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
