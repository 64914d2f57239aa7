// GenerationRequest <-> Settings: the pipeline's input is the part of the
// settings table one generate() call needs.

#include "sdgen/pipeline.h"

namespace sdgen {

namespace {

SizeConditioning::Pair wxh_of(const std::string& text) {
  if (text.empty()) return std::nullopt;
  return parse_wxh(text);
}
SizeConditioning::Pair top_left_of(const std::string& text) {
  if (text.empty()) return std::nullopt;
  return parse_top_left(text);
}
std::string wxh_text(const SizeConditioning::Pair& p) {
  return p ? std::to_string(p->first) + "x" + std::to_string(p->second) : "";
}
std::string top_left_text(const SizeConditioning::Pair& p) {
  return p ? std::to_string(p->first) + "," + std::to_string(p->second) : "";
}

}  // namespace

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
  r.timestep_spacing = s.timestep_spacing;
  r.strength = s.strength;
  r.paste_back = s.paste_back;
  r.mask_blur = s.mask_blur;
  r.vae_tiling = s.vae_tiling;
  auto& c = r.size_conditioning;
  c.original_size = wxh_of(s.original_size);
  c.target_size = wxh_of(s.target_size);
  c.crop_top_left = top_left_of(s.crop_top_left);
  c.negative_original_size = wxh_of(s.negative_original_size);
  c.negative_target_size = wxh_of(s.negative_target_size);
  c.negative_crop_top_left = top_left_of(s.negative_crop_top_left);
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
  s.timestep_spacing = r.timestep_spacing;
  if (r.init_image.defined()) s.init_image = "init image";
  s.strength = r.strength;
  if (r.mask.defined()) s.mask = "mask";
  s.paste_back = r.paste_back;
  s.mask_blur = r.mask_blur;
  s.vae_tiling = r.vae_tiling;
  const auto& c = r.size_conditioning;
  s.original_size = wxh_text(c.original_size);
  s.target_size = wxh_text(c.target_size);
  s.crop_top_left = top_left_text(c.crop_top_left);
  s.negative_original_size = wxh_text(c.negative_original_size);
  s.negative_target_size = wxh_text(c.negative_target_size);
  s.negative_crop_top_left = top_left_text(c.negative_crop_top_left);
  return s;
}

// diffusers StableDiffusionXLPipeline._get_add_time_ids:
// list(original_size + crops_coords_top_left + target_size), (height, width) order.
std::pair<torch::Tensor, torch::Tensor> sdxl_add_time_ids(const GenerationRequest& r) {
  const auto& c = r.size_conditioning;
  const std::pair<int, int> image{r.width, r.height};
  const auto original = c.original_size.value_or(image);
  const auto target = c.target_size.value_or(image);
  const auto crop = c.crop_top_left.value_or(std::pair<int, int>{0, 0});
  const auto negative_original = c.negative_original_size.value_or(original);
  const auto negative_target = c.negative_target_size.value_or(target);
  const auto negative_crop = c.negative_crop_top_left.value_or(crop);
  auto ids = [](std::pair<int, int> o, std::pair<int, int> crop, std::pair<int, int> t) {
    const std::vector<float> v{float(o.second),    float(o.first),  float(crop.first),
                               float(crop.second), float(t.second), float(t.first)};
    return torch::tensor(v, torch::kFloat32).view({1, 6});
  };
  return {ids(original, crop, target), ids(negative_original, negative_crop, negative_target)};
}

}  // namespace sdgen
