// sdgen-train finetune: more training of a finished model folder.

#include <cstdio>
#include <fstream>
#include <functional>

#include "sdgen/device_info.h"
#include "sdgen/error.h"
#include "sdgen/runtime.h"
#include "sdgen/sha256.h"
#include "train/train_cli_common.h"

namespace sdgen::train::cli {

namespace {

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
  if (recorded != value) throw Error(mismatch(recorded) + " (" + path.string() + ")");
}

}  // namespace

// More training of a finished model folder (text encoder + UNet, the VAE and
// tokenizer frozen): what lets a recipe go on from the model it shipped when
// the earlier stages' work folder is gone. Fresh scenes encoded with the
// folder's VAE and scaled by its scaling factor, a fresh AdamW, the EMA
// started from the folder's weights. Resumable like the other stages; the
// work folder remembers the weights it began from and refuses other ones.
int run_finetune(const FinetuneOptions& o) {
  const auto started = Clock::now();
  if (fs::exists(o.out) && fs::exists(o.model) && fs::equivalent(o.out, o.model))
    throw Error("--out must be another folder than --model (" + o.model + ")");
  const auto device = device_from_name(o.device);
  const fs::path work(o.work);
  const int threads = init_cpu_runtime(o.threads);
  const auto where = device.is_cpu() ? std::to_string(threads) + " threads"
                                     : device.str() + " (" + device_name(device) + ")";
  auto model = load_trainable_model(o.model);
  // What the UNet learns to predict, on which schedule: the folder's unless
  // told (an epsilon model can be taught v on the zero-SNR schedule).
  DiffusionTrainOptions target_options;
  target_options.prediction_type =
      o.prediction.empty() ? model.scheduler.prediction_type : o.prediction;
  target_options.zero_terminal_snr =
      o.terminal_snr.empty() ? model.scheduler.rescale_betas_zero_snr : o.terminal_snr == "zero";
  const auto scheduler = trained_scheduler_config(target_options);  // or throws
  fs::create_directories(work);
  // A checkpoint resumed with another target would mix two trainings.
  const auto target = target_options.prediction_type +
                      (target_options.zero_terminal_snr ? ", zero" : ", SD1.5's") + " terminal SNR";
  record_or_check(work / "finetune-target.txt", target, [&](const std::string& recorded) {
    return work.string() + " trains " + recorded + ", not " + target;
  });
  const auto source = sha256_file_hex(
      (fs::path(o.model) / "unet" / "diffusion_pytorch_model.safetensors").string());
  record_or_check(work / "finetune-source.txt", source, [&](const std::string&) {
    return work.string() + " was begun from a model with other UNet weights than " + o.model;
  });
  const double scaling = model.arch.vae.scaling_factor;
  std::fprintf(stderr, "sdgen-train: %s, %s, fine-tuning %s (scaling_factor %.5f; %s) in %s\n",
               where.c_str(), o.precision.name(device), o.model.c_str(), scaling, target.c_str(),
               work.c_str());
  const auto data = training_latents(
      model.vae, work / "latents.safetensors", o.images, o.seed + 1,
      o.pair_layout == "halves" ? synth::PairLayout::kHalves : synth::PairLayout::kFree, device);
  const auto checkpoint = work / "finetune.ckpt";
  auto options = diffusion_run_options(o.steps, o.batch, o.lr, device, o.precision, o.noise,
                                       o.stop_after, o.seed + 2, checkpoint);
  options.warmup = o.warmup;
  options.prediction_type = target_options.prediction_type;
  options.zero_terminal_snr = target_options.zero_terminal_snr;
  const auto start = Clock::now();
  train_diffusion(
      model.text_encoder, model.unet, *model.tokenizer, data, scaling, options,
      [&](int step, double loss) { log_line("finetune", step, options.steps, loss, start); });
  // The EMA of the checkpoint's step, also when the run stopped early (the
  // modules then hold the live weights).
  const int step =
      load_diffusion_checkpoint(model.text_encoder, model.unet, checkpoint.string(), true);
  write_model_folder(o.out, model.arch, model.text_encoder, model.unet, model.vae,
                     model.tokenizer_dir, scheduler);
  std::fprintf(stderr, "sdgen-train: wrote %s (EMA weights of step %d of %d) in %.0f s%s\n",
               o.out.c_str(), step, o.steps, since(started),
               step < o.steps ? "; run again to resume" : "");
  return 0;
}

}  // namespace sdgen::train::cli
