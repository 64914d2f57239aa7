// The A1111 parameters of a generation request: kept apart from a1111.cpp so
// that the text parsers there build without libtorch (fuzzers).
#include "sdgen/a1111.h"
#include "sdgen/pipeline.h"

namespace sdgen {

A1111Parameters a1111_parameters_for(const GenerationRequest& r, const ImageMetadata& image) {
  A1111Parameters p;
  p.prompt = r.prompt;
  p.negative_prompt = r.negative_prompt;
  p.set("Steps", std::to_string(r.steps));
  p.set("Sampler", a1111_sampler_label(image.sampler));
  if (r.schedule == "karras" || image.sampler == "dpmpp_2m_karras")
    p.set("Schedule type", "Karras");
  else if (r.schedule == "normal")
    p.set("Schedule type", "Normal");
  p.set("CFG scale", a1111_number(r.cfg_scale));
  p.set("Seed", std::to_string(r.seed));
  p.set("Size", std::to_string(r.width) + "x" + std::to_string(r.height));
  if (!image.model_hash.empty()) p.set("Model hash", image.model_hash);
  if (!image.model_name.empty()) p.set("Model", image.model_name);
  if (r.init_image.defined()) p.set("Denoising strength", a1111_number(r.strength));
  if (r.clip_skip > 1) p.set("Clip skip", std::to_string(r.clip_skip));
  // Extra parameters (A1111's extra_generation_params), before Version.
  if (r.eta > 0) p.set("Eta DDIM", a1111_number(r.eta));
  // The key the A1111 CFG Rescale extension writes (it reads it back too).
  if (r.guidance_rescale > 0) p.set("CFG Rescale", a1111_number(r.guidance_rescale));
  if (r.batch_size > 1) {
    // Images of one batch share one noise tensor (diffusers' convention), so
    // reproducing image i needs the batch: A1111's old "Batch size/pos" fields.
    p.set("Batch size", std::to_string(r.batch_size));
    p.set("Batch pos", std::to_string(image.batch_pos));
  }
  if (image.long_prompt_truncate) p.set("Long prompt", "truncate");
  p.set("Version", "sdgen " + image.version);
  return p;
}

}  // namespace sdgen
