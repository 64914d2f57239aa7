// The settings machinery: enum names, the sampler registry, lookups in the
// table, layering, and the A1111 / --json views of a Settings. The rows
// themselves are built in settings_table.cpp from sdgen/settings.def.

#include "sdgen/settings.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

#include "sdgen/a1111.h"
#include "sdgen/error.h"

namespace sdgen {
namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Enum <-> names: the first name of each entry is the canonical one.
template <typename E>
struct NameTable {
  std::vector<std::pair<E, std::vector<std::string>>> entries;

  std::string name(E value) const {
    for (const auto& [v, names] : entries)
      if (v == value) return names.front();
    return "";
  }
  std::optional<E> parse(const std::string& text) const {
    const std::string key = lower(text);
    for (const auto& [v, names] : entries)
      for (const auto& n : names)
        if (lower(n) == key) return v;
    return std::nullopt;
  }
};

const NameTable<SigmaSchedule>& schedule_names() {
  static const NameTable<SigmaSchedule> t{{{SigmaSchedule::automatic, {"", "automatic"}},
                                           {SigmaSchedule::karras, {"karras"}},
                                           {SigmaSchedule::normal, {"normal"}}}};
  return t;
}
const NameTable<PredictionType>& prediction_names() {
  static const NameTable<PredictionType> t{
      {{PredictionType::model, {""}},
       {PredictionType::epsilon, {"epsilon", "eps"}},
       {PredictionType::v_prediction, {"v_prediction", "v", "v-prediction"}}}};
  return t;
}
const NameTable<LongPromptMode>& long_prompt_names() {
  static const NameTable<LongPromptMode> t{
      {{LongPromptMode::chunks, {"chunks"}}, {LongPromptMode::truncate, {"truncate"}}}};
  return t;
}
const NameTable<DtypeChoice>& dtype_names() {
  static const NameTable<DtypeChoice> t{{{DtypeChoice::automatic, {"auto"}},
                                         {DtypeChoice::fp32, {"fp32", "float32"}},
                                         {DtypeChoice::fp16, {"fp16", "float16"}},
                                         {DtypeChoice::bf16, {"bf16", "bfloat16"}},
                                         {DtypeChoice::fp32_lowmem, {"fp32-lowmem"}}}};
  return t;
}
const NameTable<ChannelsLast>& channels_last_names() {
  static const NameTable<ChannelsLast> t{{{ChannelsLast::automatic, {"auto"}},
                                          {ChannelsLast::on, {"on"}},
                                          {ChannelsLast::off, {"off"}}}};
  return t;
}

}  // namespace

std::string to_string(SigmaSchedule v) { return schedule_names().name(v); }
std::string to_string(PredictionType v) { return prediction_names().name(v); }
std::string to_string(LongPromptMode v) { return long_prompt_names().name(v); }
std::string to_string(DtypeChoice v) { return dtype_names().name(v); }
std::string to_string(ChannelsLast v) { return channels_last_names().name(v); }
std::string to_string(Sampler v) { return sampler_info(v).name; }
std::string to_string(const DeviceChoice& v) {
  switch (v.kind) {
    case DeviceChoice::Kind::automatic:
      return "auto";
    case DeviceChoice::Kind::cpu:
      return "cpu";
    case DeviceChoice::Kind::cuda:
      return v.index < 0 ? "cuda" : "cuda:" + std::to_string(v.index);
  }
  return "auto";
}

std::optional<SigmaSchedule> parse_sigma_schedule(const std::string& n) {
  return schedule_names().parse(n);
}
std::optional<PredictionType> parse_prediction_type(const std::string& n) {
  return prediction_names().parse(n);  // "": the model's own
}
std::optional<LongPromptMode> parse_long_prompt_mode(const std::string& n) {
  return long_prompt_names().parse(n);
}
std::optional<DtypeChoice> parse_dtype_choice(const std::string& n) {
  return dtype_names().parse(n);
}
std::optional<ChannelsLast> parse_channels_last(const std::string& n) {
  return channels_last_names().parse(n);
}
std::optional<DeviceChoice> parse_device_choice(const std::string& text) {
  const std::string n = lower(text);
  DeviceChoice d;
  if (n == "auto") return d;
  if (n == "cpu") {
    d.kind = DeviceChoice::Kind::cpu;
    return d;
  }
  if (n == "cuda") {
    d.kind = DeviceChoice::Kind::cuda;
    return d;
  }
  if (n.rfind("cuda:", 0) != 0 || n.size() == 5 || n.size() > 9) return std::nullopt;
  for (size_t i = 5; i < n.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(n[i]))) return std::nullopt;
  d.kind = DeviceChoice::Kind::cuda;
  d.index = std::stoi(n.substr(5));
  return d;
}

// ---- Samplers ----------------------------------------------------------------

namespace {
// A whole number from `text` (surrounding spaces allowed), in [lo, hi].
int pair_part(const std::string& text, int lo, int hi, const char* form) {
  size_t a = 0, b = text.size();
  while (a < b && std::isspace(static_cast<unsigned char>(text[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(text[b - 1]))) --b;
  if (a == b || b - a > 9) throw SettingError(std::string("must be ") + form);
  int v = 0;
  for (size_t i = a; i < b; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(text[i])))
      throw SettingError(std::string("must be ") + form);
    v = v * 10 + (text[i] - '0');
  }
  if (v < lo || v > hi)
    throw SettingError(std::string("must be ") + form + " with each part from " +
                       std::to_string(lo) + " to " + std::to_string(hi));
  return v;
}

std::pair<int, int> parse_pair(const std::string& text, const char* separators, int lo,
                               const char* form) {
  const auto at = text.find_first_of(separators);
  if (at == std::string::npos || text.find_first_of(separators, at + 1) != std::string::npos)
    throw SettingError(std::string("must be ") + form);
  return {pair_part(text.substr(0, at), lo, kMaxConditioningPixels, form),
          pair_part(text.substr(at + 1), lo, kMaxConditioningPixels, form)};
}
}  // namespace

std::pair<int, int> parse_wxh(const std::string& text) {
  return parse_pair(text, "xX", 1, "WIDTHxHEIGHT (e.g. 1024x768)");
}

std::pair<int, int> parse_top_left(const std::string& text) {
  return parse_pair(text, ",", 0, "TOP,LEFT (e.g. 0,0)");
}

const std::vector<SamplerInfo>& sampler_registry() {
  // Labels: A1111's sd_samplers_compvis / sd_samplers_kdiffusion names; classes:
  // the diffusers scheduler each follows. Order: what --help and errors list.
  static const std::vector<SamplerInfo> registry = {
      {Sampler::ddim, "ddim", "DDIM", "DDIMScheduler", ""},
      {Sampler::ddpm, "ddpm", "DDPM", "DDPMScheduler", ""},
      {Sampler::dpmpp_2m, "dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler", "DPM++ 2M Karras"},
      {Sampler::dpmpp_2m_karras, "dpmpp_2m_karras", "DPM++ 2M", "", ""},
      {Sampler::unipc, "unipc", "UniPC", "UniPCMultistepScheduler", ""},
      {Sampler::lms, "lms", "LMS", "LMSDiscreteScheduler", "LMS Karras"},
      {Sampler::pndm, "pndm", "PLMS", "PNDMScheduler", ""},
      {Sampler::lcm, "lcm", "LCM", "LCMScheduler", ""},
      {Sampler::euler, "euler", "Euler", "EulerDiscreteScheduler", ""},
      {Sampler::euler_a, "euler_a", "Euler a", "EulerAncestralDiscreteScheduler", ""},
      {Sampler::heun, "heun", "Heun", "HeunDiscreteScheduler", ""},
  };
  return registry;
}

const SamplerInfo& sampler_info(Sampler sampler) {
  for (const auto& s : sampler_registry())
    if (s.id == sampler) return s;
  throw std::logic_error("sampler missing from the registry");
}

std::optional<Sampler> find_sampler(const std::string& name) {
  std::string key = lower(name);
  // "DDIMScheduler" and "DDIM" alike.
  const std::string suffix = "scheduler";
  if (key.size() > suffix.size() &&
      key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0)
    key.erase(key.size() - suffix.size());
  auto bare_class = [](const char* cls) {
    std::string c = lower(cls);
    return c.size() > 9 ? c.substr(0, c.size() - 9) : std::string();
  };
  for (const auto& s : sampler_registry())
    if (key == s.name || (*s.diffusers_class && key == bare_class(s.diffusers_class))) return s.id;
  // A1111 labels; "DPM++ 2M Karras" (pre-1.9) names the Karras variant.
  if (key == "dpm++ 2m karras") return Sampler::dpmpp_2m_karras;
  for (const auto& s : sampler_registry())
    if (key == lower(s.a1111_label)) return s.id;
  return std::nullopt;
}

Sampler parse_sampler(const std::string& name) {
  if (auto s = find_sampler(name)) return *s;
  std::string valid;
  for (const auto& n : sampler_names()) valid += (valid.empty() ? "" : ", ") + n;
  throw Error("unknown sampler '" + name + "' (valid: " + valid + ")");
}

std::vector<std::string> sampler_names() {
  std::vector<std::string> names;
  for (const auto& s : sampler_registry()) names.emplace_back(s.name);
  return names;
}

// ---- Lookups -------------------------------------------------------------------

const SettingSpec* find_setting(const std::string& name) {
  for (const auto& s : settings_table())
    if (s.name == name) return &s;
  return nullptr;
}

const SettingSpec& setting(const std::string& name) {
  if (const auto* s = find_setting(name)) return *s;
  throw std::logic_error("no setting named " + name);
}

const SettingSpec* find_setting_by_line_key(const std::string& key) {
  if (key.empty()) return nullptr;
  for (const auto& s : settings_table())
    if (s.line_key == key) return &s;
  return nullptr;
}

const SettingSpec* find_setting_by_flag(const std::string& flag) {
  for (const auto& s : settings_table()) {
    size_t start = 0;
    while (start <= s.flags.size()) {
      size_t comma = s.flags.find(',', start);
      if (comma == std::string::npos) comma = s.flags.size();
      if (s.flags.compare(start, comma - start, flag) == 0) return &s;
      start = comma + 1;
    }
  }
  return nullptr;
}

std::vector<std::string> prompt_file_keys() {
  std::vector<std::string> keys;
  for (const auto& s : settings_table())
    if (!s.line_key.empty()) keys.push_back(s.line_key);
  return keys;
}

// ---- Layers --------------------------------------------------------------------

void SettingLayer::set_checked(const SettingSpec& spec, const nlohmann::json& value) {
  values_[spec.name] = spec.check(value);
}

const nlohmann::json* SettingLayer::find(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? nullptr : &it->second;
}

Settings resolve_settings(const std::vector<const SettingLayer*>& layers) {
  Settings s;
  for (const auto* layer : layers)
    if (layer)
      for (const auto& [name, value] : layer->values()) setting(name).set(s, value);
  return s;
}

const SettingLayer* setting_source(const std::vector<const SettingLayer*>& layers,
                                   const std::string& name) {
  const SettingLayer* found = nullptr;
  for (const auto* layer : layers)
    if (layer && layer->has(name)) found = layer;
  return found;
}

std::string describe_flag_value(const SettingSpec& spec, const std::string& value) {
  return spec.flag + " " + value;
}

std::string describe_line_value(const SettingSpec& spec, const nlohmann::json& value) {
  return "\"" + spec.line_key + "\" " +
         value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json settings_json(const Settings& settings) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& s : settings_table())
    if (!s.out_key.empty()) out[s.out_key] = s.get(settings);
  // txt2img: no init image and no strength (null rather than unused values).
  if (settings.init_image.empty()) out["init_image"] = out["strength"] = nullptr;
  if (settings.mask.empty()) out["mask"] = out["mask_blur"] = nullptr;
  return out;
}

// ---- A1111 ---------------------------------------------------------------------

A1111Parameters a1111_parameters(const Settings& settings, const ImageMetadata& image) {
  A1111Parameters p;
  for (const auto& s : settings_table())
    if (s.write_a1111) s.write_a1111(settings, image, p);
  p.set("Version", "sdgen " + image.version);
  return p;
}

A1111Reading read_a1111_settings(const A1111Parameters& parameters, const std::string& source) {
  A1111Reading r;
  r.settings = SettingLayer(source);
  for (const auto& s : settings_table())
    if (s.read_a1111) s.read_a1111(parameters, r);
  return r;
}

}  // namespace sdgen
