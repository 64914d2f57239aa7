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
//
// This file parses the flags; the subcommands are src/train/train_cli_*.cpp.

#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "train/train_cli.h"

namespace {

namespace cli = sdgen::train::cli;

void add_noise_options(CLI::App* cmd, cli::NoiseOptions& noise) {
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

void add_precision_flags(CLI::App* cmd, cli::Precision& precision, const std::string& what) {
  auto* fp32 = cmd->add_flag("--fp32", precision.fp32, "train " + what + " in fp32");
  cmd->add_flag("--bf16", precision.bf16,
                "train " + what +
                    " under bf16 autocast, fp32 weights (default: bf16 autocast on a GPU and "
                    "where the CPU has native bf16, else fp32)")
      ->excludes(fp32);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sdgen-train: train and judge sdgen's default model"};
  app.option_defaults()->always_capture_default();  // --help shows every default
  app.require_subcommand(1);
  cli::AllOptions all;
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
  cli::FinetuneOptions finetune;
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

  cli::EvalOptions eval;
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
    if (all_cmd->parsed()) return cli::run_all(all, argv[0]);
    if (finetune_cmd->parsed()) return cli::run_finetune(finetune);
    if (render_cmd->parsed()) return cli::run_render(render_out, render_count, render_seed);
    if (eval_cmd->parsed()) return cli::run_eval(eval);
    if (export_cmd->parsed())
      return cli::run_export(export_work, export_out, export_live, export_checkpoint);
    if (eval_vae_cmd->parsed()) return cli::run_eval_vae(vae_file, vae_work, vae_count, vae_save);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sdgen-train: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
