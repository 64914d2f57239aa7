// sdgen command line: parses arguments and calls the library, nothing more.
// batch.cpp runs generations, info.cpp --info and --show-params.

#include <unistd.h>

#include <iostream>
#include <string>

#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include "options.h"
#include "sdgen/error.h"
#include "sdgen/interrupt.h"
#include "sdgen/schedulers/scheduler.h"

using sdgen::cli::CliError;
using sdgen::cli::Options;

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"sdgen: Stable Diffusion 1.x/2.x text-to-image on libtorch"};
  app.set_version_flag("--version", std::string("sdgen ") + SDGEN_VERSION);
  app.get_formatter()->column_width(34);

  const char* model_group = "Model";
  app.add_option("-m,--model", o.model,
                 "Model: a diffusers folder (model_index.json) or a single-file .safetensors "
                 "checkpoint (default: the model under models/)")
      ->group(model_group);
  app.add_option("--config", o.config_dir,
                 "Diffusers-style folder with unet/ vae/ text_encoder/ config.json that overrides "
                 "the architecture inferred from a single file")
      ->group(model_group);
  app.add_option("--tokenizer", o.tokenizer,
                 "Tokenizer folder (vocab.json + merges.txt, or a SentencePiece spiece.model) "
                 "or bpe_simple_vocab_16e6.txt.gz")
      ->group(model_group);
  app.add_option("--prediction", o.prediction, "Override the prediction type: epsilon or v")
      ->group(model_group);
  app.add_option("--device", o.device, "auto, cpu, cuda or cuda:N")
      ->capture_default_str()
      ->group(model_group);
  app.add_option(
         "--dtype", o.dtype,
         "auto (fp16 on CUDA; bf16 on a CPU with native bf16, else fp32), fp32, fp16 or bf16")
      ->capture_default_str()
      ->group(model_group);
  app.add_option("-t,--threads", o.threads, "CPU threads (default: all cores)")->group(model_group);
  app.add_flag("--no-cuda-graphs", o.no_cuda_graphs,
               "CUDA: run the UNet step eagerly instead of replaying a captured CUDA graph")
      ->group(model_group);
  app.add_option("--channels-last", o.channels_last,
                 "Convolutions in channels_last memory format: on, off or auto")
      ->capture_default_str()
      ->group(model_group);
  app.add_flag("--no-memory-check", o.no_memory_check,
               "Skip the memory estimate that refuses, before loading or generating, what "
               "cannot fit in RAM / GPU memory (SDGEN_MEMORY_LIMIT_MB=N sets the budget)")
      ->group(model_group);
  app.add_flag("--info", o.info,
               "Print what the model is (family, prediction type, dtypes, parameter counts, "
               "tokenizer, hash) and exit")
      ->group(model_group);

  const char* gen_group = "Generation";
  app.add_option("-p,--prompt", o.prompt,
                 "What to draw; A1111 syntax: (word) x1.1, [word] /1.1, (word:1.5), \\( escapes, "
                 "BREAK")
      ->group(gen_group);
  app.add_option("-n,--negative-prompt", o.negative_prompt, "What to steer away from")
      ->group(gen_group);
  app.add_option("--steps", o.steps, "Sampling steps")->capture_default_str()->group(gen_group);
  app.add_option("--cfg-scale", o.cfg_scale, "Classifier-free guidance scale (1 = off)")
      ->capture_default_str()
      ->group(gen_group);
  app.add_option("-s,--seed", o.seed, "Seed (random and printed when not given)")->group(gen_group);
  app.add_option("-W,--width", o.width, "Image width, a multiple of 8")
      ->capture_default_str()
      ->group(gen_group);
  app.add_option("-H,--height", o.height, "Image height, a multiple of 8")
      ->capture_default_str()
      ->group(gen_group);
  std::string sampler_names;
  for (const auto& n : sdgen::scheduler_names())
    sampler_names += (sampler_names.empty() ? "" : ", ") + n;
  app.add_option(
         "--sampler", o.sampler,
         "Sampler: " + sampler_names + " (case-insensitive; A1111 names such as \"Euler a\" work)")
      ->capture_default_str()
      ->group(gen_group);
  app.add_option(
         "--scheduler", o.schedule,
         "Sigma schedule of sigma-based samplers: karras or normal (default: the sampler's)")
      ->group(gen_group);
  app.add_option("--eta", o.eta, "DDIM eta (0 = deterministic)")
      ->capture_default_str()
      ->group(gen_group);
  app.add_option("--guidance-rescale", o.guidance_rescale,
                 "diffusers' guidance_rescale, 0 to 1: pulls each guided prediction's spread "
                 "back towards the prompt's, for v-prediction models on a zero-terminal-SNR "
                 "schedule (default: what the model folder asks for, e.g. 0.7 for the default "
                 "model, else 0)")
      ->group(gen_group);
  app.add_option("-i,--init-image", o.init_image,
                 "img2img: start from this PNG (RGB); its size is used unless -W/-H are given")
      ->group(gen_group);
  app.add_option("--strength", o.strength,
                 "img2img: how much of the schedule to run over the init image, 0 < S <= 1")
      ->capture_default_str()
      ->group(gen_group);
  app.add_option("--clip-skip", o.clip_skip,
                 "Text encoder layer from the end (A1111 convention: 1 = last, 2 = penultimate)")
      ->capture_default_str()
      ->group(gen_group);
  app.add_option("--long-prompt", o.long_prompt,
                 "Prompts over 75 tokens: chunks (A1111: 75-token chunks encoded separately) or "
                 "truncate (diffusers)")
      ->capture_default_str()
      ->group(gen_group);
  app.add_option("-b,--batch-size", o.batch_size,
                 "Images per UNet batch; they share one noise tensor (diffusers' convention)")
      ->capture_default_str()
      ->group(gen_group);
  app.add_option("--batch-count", o.batch_count,
                 "Repeat each prompt N times with seeds seed, seed+1, ... (A1111's batch count)")
      ->capture_default_str()
      ->group(gen_group);
  app.add_flag("--vae-tiling", o.vae_tiling, "Decode in overlapping tiles (large images)")
      ->group(gen_group);

  const char* out_group = "Output and batch jobs";
  app.add_option("-o,--output", o.output,
                 "Output PNG or pattern with {index} {seed} {prompt} {line} %03d; without fields "
                 "and with several images: NAME-<index>.png")
      ->capture_default_str()
      ->group(out_group);
  app.add_option("--prompt-file", o.prompt_file,
                 "One prompt per line, or a JSON object per line overriding settings; - reads "
                 "standard input as it arrives")
      ->group(out_group);
  app.add_flag("--skip-existing", o.skip_existing,
               "Skip images whose output file exists (resume an interrupted run)")
      ->group(out_group);
  app.add_option("--shard", o.shard, "K/N: run only prompt-file entries with entry index % N == K")
      ->group(out_group);
  app.add_flag("--fail-fast", o.fail_fast, "Stop at the first bad line or failed image")
      ->group(out_group);
  app.add_option("--from-png", o.from_png,
                 "Take the settings from this PNG's A1111 parameters (other flags override)")
      ->group(out_group);
  app.add_option("--show-params", o.show_params, "Print the A1111 parameters of a PNG and exit")
      ->group(out_group);
  app.add_flag("--json", o.json,
               "Print one JSON object per written image on stdout (path, seed, settings, "
               "timings); with --info/--show-params print those as JSON")
      ->group(out_group);
  app.add_flag("-q,--quiet", o.quiet, "No progress; print only the output paths and errors")
      ->group(out_group);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what()) << " (see sdgen --help)"
              << std::endl;
    return sdgen::cli::kExitUsage;
  }
  for (const auto* opt : app.get_options())
    if (opt->count() > 0)
      for (const auto& name : opt->get_lnames()) o.given.insert(name);
  for (auto& c : o.schedule) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));

  try {
    if (!o.show_params.empty()) return sdgen::cli::run_show_params(o);
    if (o.info) return sdgen::cli::run_info(o);
    // Ctrl-C / SIGTERM: stop after the current sampling step, exit 130.
    sdgen::install_interrupt_handlers(!o.quiet && ::isatty(STDERR_FILENO) != 0);
    return sdgen::cli::run_generation(o);
  } catch (const CliError& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what()) << std::endl;
    return e.code();
  } catch (const sdgen::Error& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what()) << std::endl;
  } catch (const c10::Error& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what_without_backtrace()) << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what()) << std::endl;
  }
  return sdgen::cli::kExitGeneration;
}
