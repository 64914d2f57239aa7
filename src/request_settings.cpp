// GenerationRequest <-> Settings: the pipeline's input is the part of the
// settings table one generate() call needs.

#include "sdgen/pipeline.h"

namespace sdgen {

GenerationRequest request_from_settings(const Settings& s) {
  GenerationRequest r;
  r.prompt = s.prompt;
  r.negative_prompt = s.negative_prompt;
  r.steps = s.steps;
  r.cfg_scale = s.cfg_scale;
  r.guidance_rescale = s.guidance_rescale;
  r.seed = s.seed.value_or(0);
  r.width = s.width;
  r.height = s.height;
  r.batch_size = s.batch_size;
  r.sampler = s.sampler;
  r.eta = s.eta;
  r.clip_skip = s.clip_skip;
  r.schedule = s.schedule;
  r.strength = s.strength;
  r.vae_tiling = s.vae_tiling;
  return r;
}

Settings settings_of_request(const GenerationRequest& r) {
  Settings s;
  s.prompt = r.prompt;
  s.negative_prompt = r.negative_prompt;
  s.steps = r.steps;
  s.cfg_scale = r.cfg_scale;
  s.guidance_rescale = r.guidance_rescale;
  s.seed = r.seed;
  s.width = r.width;
  s.height = r.height;
  s.batch_size = r.batch_size;
  s.sampler = r.sampler;
  s.eta = r.eta;
  s.clip_skip = r.clip_skip;
  s.schedule = r.schedule;
  if (r.init_image.defined()) s.init_image = "init image";
  s.strength = r.strength;
  s.vae_tiling = r.vae_tiling;
  return s;
}

}  // namespace sdgen
