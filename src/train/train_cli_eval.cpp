// sdgen-train render, export, eval-vae and eval: training renders, a model
// folder from a checkpoint, and the checker's judgement of a VAE or a model.

#include <algorithm>
#include <array>
#include <cstdio>
#include <random>
#include <vector>

#include "sdgen/image_io.h"
#include "sdgen/model.h"
#include "sdgen/pipeline.h"
#include "sdgen/runtime.h"
#include "train/train_cli_common.h"

namespace sdgen::train::cli {

int run_render(const std::string& out, int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  fs::create_directories(out);
  std::string list;
  for (int i = 0; i < count; ++i) {
    const auto spec = synth::random_spec(rng);
    const auto name = "render_" + std::to_string(i) + ".png";
    write_png((fs::path(out) / name).string(), synth::render(synth::place_scene(spec, 512, rng)));
    list += name + "\t" + spec.caption() + "\n";
  }
  write_text(fs::path(out) / "captions.tsv", list);
  return 0;
}

// The model folder from a work folder's current training checkpoint (EMA or
// live weights), to judge a run before it ends.
int run_export(const std::string& work_dir, const std::string& out_dir, bool live,
               const std::string& checkpoint) {
  init_cpu_runtime(0);
  const fs::path work(work_dir);
  auto trained = work_architecture(work);
  trained.arch.vae.scaling_factor =
      latent_scaling_factor(load_latents(work / "latents.safetensors").latents);
  AutoencoderKL vae(trained.arch.vae);
  CLIPTextModel text_encoder(trained.arch.text);
  UNet2DConditionModel unet(trained.arch.unet);
  load_module(*vae, work / "vae.safetensors", "", "vae");
  const int step =
      load_diffusion_checkpoint(text_encoder, unet, (work / checkpoint).string(), !live);
  write_model_folder(out_dir, trained.arch, text_encoder, unet, vae, (work / "tokenizer").string());
  std::fprintf(stderr, "sdgen-train: wrote %s (%s weights of step %d)\n", out_dir.c_str(),
               live ? "live" : "EMA", step);
  return 0;
}

// The VAE alone: training renders encoded and decoded must still pass the
// checker, or no UNet can (the ceiling of the semantic test).
int run_eval_vae(const std::string& vae_file, const std::string& work_dir, int count,
                 const std::string& save) {
  init_cpu_runtime(0);
  torch::NoGradGuard no_grad;
  auto trained = work_architecture(work_dir);
  AutoencoderKL vae(trained.arch.vae);
  load_module(*vae, vae_file, "", "vae");
  vae->eval();
  if (!save.empty()) fs::create_directories(save);
  std::mt19937_64 rng(777);
  int passed = 0;
  for (int i = 0; i < count; ++i) {
    const auto spec = synth::random_spec(rng);
    const auto image = synth::render(synth::place_scene(spec, 512, rng));
    const auto input = to_model_input(image.unsqueeze(0));
    const auto decoded = to_uint8_images(vae->decode(vae->encode(input).mean))[0];
    const auto check = synth::check_image(spec, decoded);
    passed += check.pass ? 1 : 0;
    if (!check.pass)
      std::fprintf(stderr, "  fail: \"%s\": %s\n", spec.caption().c_str(), check.reason.c_str());
    if (!save.empty())
      write_png((fs::path(save) / ("vae_" + std::to_string(i) + ".png")).string(),
                torch::cat({image, decoded}, 1));
  }
  std::printf("VAE reconstructions passing the checker: %d/%d\n", passed, count);
  return 0;
}

int run_eval(const EvalOptions& o) {
  init_cpu_runtime(o.threads);
  LoadOptions load;
  load.model_path = o.model;
  load.dtype = dtype_from_name(o.dtype, default_dtype(torch::kCPU));
  auto model = load_model(load);
  Pipeline pipeline(model);
  // As sdgen: the model folder's guidance_rescale unless one is given.
  const double rescale =
      o.guidance_rescale >= 0 ? o.guidance_rescale : model.default_guidance_rescale.value_or(0.0);
  std::vector<synth::SceneSpec> specs;
  if (o.one_shape) {
    // Captions of one shape (their combinations are all in the training set).
    std::mt19937_64 rng(4242);
    while (static_cast<int>(specs.size()) < o.prompts) {
      auto spec = synth::random_spec(rng);
      if (spec.objects.size() == 1) specs.push_back(std::move(spec));
    }
  } else if (o.training_prompts) {
    std::mt19937_64 rng(12345);
    for (int i = 0; i < o.prompts; ++i) specs.push_back(synth::random_spec(rng));
  } else {
    specs = synth::held_out_specs(o.prompts, o.reversed_too);
  }
  if (!o.save.empty()) fs::create_directories(o.save);
  int passed = 0, total = 0;
  std::array<int, synth::kCheckFailureKinds> failures{};
  double seconds = 0;
  for (size_t p = 0; p < specs.size(); ++p) {
    int prompt_passed = 0;
    for (int seed = 0; seed < o.seeds; ++seed) {
      GenerationRequest request;
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
      const auto check = synth::check_image(specs[p], image);
      ++total;
      passed += check.pass ? 1 : 0;
      prompt_passed += check.pass ? 1 : 0;
      ++failures[static_cast<size_t>(check.failure)];
      if (!o.save.empty()) {
        write_png((fs::path(o.save) / ("p" + std::to_string(p) + "_s" + std::to_string(seed) +
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
  for (int kind = 1; kind < synth::kCheckFailureKinds; ++kind) {
    if (failures[static_cast<size_t>(kind)] == 0) continue;
    summary += (summary.empty() ? "" : ", ") +
               std::string(synth::check_failure_name(static_cast<synth::CheckFailure>(kind))) +
               " " + std::to_string(failures[static_cast<size_t>(kind)]);
  }
  if (!summary.empty()) std::printf("failed: %s\n", summary.c_str());
  return 0;
}

}  // namespace sdgen::train::cli
