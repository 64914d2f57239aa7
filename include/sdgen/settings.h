#pragma once

// Every setting of a generation run, declared once in sdgen/settings.def:
// its field, type, default, allowed values, CLI flag, prompt-file key, A1111
// "parameters" label, A1111 web API key and --json key. Flag parsing,
// prompt-file lines, --from-png, the A1111 writer, --json output and the
// range checks all read that table (settings_table.cpp). Values from each
// source are layered in one place (resolve_settings): built-in defaults <-
// model folder <- --from-png <- command line <- prompt-file line.
// libtorch-free: part of the formats library (fuzzed with the parsers).

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sdgen/settings.def"

namespace sdgen {

struct A1111Parameters;  // sdgen/a1111.h
struct ImageMetadata;

// ---- Enumerations, parsed once where a value enters ----------------------

enum class Sampler {
  ddim,
  ddpm,
  pndm,
  euler,
  euler_a,
  heun,
  lms,
  dpmpp_2m,
  dpmpp_2m_karras,
  unipc,
  lcm
};
// The sigma schedule of sigma-based samplers (A1111 "Schedule type";
// diffusers use_karras_sigmas); automatic = the sampler's own.
enum class SigmaSchedule { automatic, karras, normal };
// model = the model's own (its scheduler config).
enum class PredictionType { model, epsilon, v_prediction };
// Prompts over 75 tokens: A1111's 75-token chunks or diffusers' truncation.
enum class LongPromptMode { chunks, truncate };
// fp32_lowmem: fp32 arithmetic on weights kept as the checkpoint stores them
// (LoadOptions::weights_as_stored).
enum class DtypeChoice { automatic, fp32, fp16, bf16, fp32_lowmem };
enum class ChannelsLast { automatic, on, off };

struct DeviceChoice {
  enum class Kind { automatic, cpu, cuda };
  Kind kind = Kind::automatic;
  int index = -1;  // cuda:N; -1 = not given (device 0)
  bool operator==(const DeviceChoice& o) const { return kind == o.kind && index == o.index; }
};

// Names as flags, prompt files and --json spell them ("euler_a", "karras",
// "v_prediction", "cuda:1"); parsing is case-insensitive and takes the
// aliases below. setting_choices<E>() lists the canonical names.
std::string to_string(Sampler value);
std::string to_string(SigmaSchedule value);   // automatic -> "" (as --json always printed it)
std::string to_string(PredictionType value);  // model -> ""
std::string to_string(LongPromptMode value);
std::string to_string(DtypeChoice value);  // automatic -> "auto"
std::string to_string(ChannelsLast value);
std::string to_string(const DeviceChoice& value);
std::optional<SigmaSchedule> parse_sigma_schedule(const std::string& name);
std::optional<PredictionType> parse_prediction_type(const std::string& name);
std::optional<LongPromptMode> parse_long_prompt_mode(const std::string& name);
std::optional<DtypeChoice> parse_dtype_choice(const std::string& name);
std::optional<ChannelsLast> parse_channels_last(const std::string& name);
std::optional<DeviceChoice> parse_device_choice(const std::string& name);

// ---- Pairs of whole numbers (SDXL's size and crop conditioning) ------------

// The largest size or crop coordinate sdgen takes (SDXL's micro-conditioning
// values are features of any size; this only bounds typos).
inline constexpr int kMaxConditioningPixels = 65536;
// "WxH" (whole numbers 1..kMaxConditioningPixels; spaces around the parts
// allowed, 'X' too) -> {width, height}. Throws SettingError naming the form.
std::pair<int, int> parse_wxh(const std::string& text);
// "TOP,LEFT" (whole numbers 0..kMaxConditioningPixels) -> {top, left}.
std::pair<int, int> parse_top_left(const std::string& text);

// ---- The sampler registry: sdgen, A1111 and diffusers names ---------------

struct SamplerInfo {
  Sampler id;
  const char* name;             // sdgen's canonical name ("euler_a")
  const char* a1111_label;      // what A1111 writes and shows ("Euler a")
  const char* diffusers_class;  // "EulerAncestralDiscreteScheduler"
  // A1111 before 1.9 wrote the Karras schedule into the sampler's label
  // ("DPM++ 2M Karras"); read as this sampler with SigmaSchedule::karras.
  const char* a1111_karras_label;
};
const std::vector<SamplerInfo>& sampler_registry();
const SamplerInfo& sampler_info(Sampler sampler);
// Any of a sampler's names, case-insensitive: canonical, A1111 label, diffusers
// class (with or without "Scheduler"). "DPM++ 2M Karras" is dpmpp_2m_karras.
std::optional<Sampler> find_sampler(const std::string& name);
// The same, throwing Error "unknown sampler 'x' (valid: ddim, ...)".
Sampler parse_sampler(const std::string& name);
std::vector<std::string> sampler_names();  // canonical names, registry order

// ---- The settings ---------------------------------------------------------

#define SDGEN_SETTING_FIELD(TYPE, FIELD, DEFAULT, ...) TYPE FIELD = DEFAULT;
// Every setting's value; the fields and defaults come from settings.def.
struct Settings {
  SDGEN_SETTINGS(SDGEN_SETTING_FIELD)
};
#undef SDGEN_SETTING_FIELD

// A value that a setting does not take; what() is the reason alone ("must be
// between 1 and 1000"), callers add where it came from. `unreadable`: the text
// is not of the setting's type at all ("many" steps), as opposed to a value of
// the right type that is not allowed (5000 steps).
class SettingError : public std::runtime_error {
 public:
  explicit SettingError(const std::string& reason, bool unreadable = false)
      : std::runtime_error(reason), unreadable_(unreadable) {}
  bool unreadable() const { return unreadable_; }

 private:
  bool unreadable_;
};

class SettingLayer;
struct A1111Reading;

struct SettingSpec {
  std::string name;   // the field's name: "cfg_scale"
  std::string flags;  // CLI11 names: "-s,--seed"
  std::string flag;   // the long flag: "--seed"
  std::string group;  // --help section
  std::string help;
  std::string line_key;      // prompt-file JSON key, "" = command line only
  std::string out_key;       // --json output key, "" = not printed
  std::string a1111_label;   // the A1111 parameters label it writes/reads, "" = none
  std::string api_key;       // A1111 web API field, "" = none
  bool is_flag = false;      // a bool set by a flag without a value
  bool is_list = false;      // a list: the flag repeats, each value one item
  std::string default_text;  // the default as --help shows it ("" = none)
  std::string allowed;       // the allowed values in words ("1 to 1000")

  // Text (a flag's value, an A1111 field) to the setting's JSON value, checked;
  // throws SettingError with the reason.
  std::function<nlohmann::json(const std::string& text)> from_text;
  // A JSON value (a prompt-file line) checked and normalised (enum names made
  // canonical); throws SettingError with the reason.
  std::function<nlohmann::json(const nlohmann::json& value)> check;
  std::function<nlohmann::json(const Settings&)> get;
  std::function<void(Settings&, const nlohmann::json& checked)> set;
  // The A1111 fields it writes for one image (nothing when it has no label or
  // the value is the one A1111 leaves out), and reads back: into `layer`
  // (checked values) or, when a value is unreadable, a warning.
  std::function<void(const Settings&, const ImageMetadata&, A1111Parameters&)> write_a1111;
  std::function<void(const A1111Parameters&, A1111Reading&)> read_a1111;
};

// The table, in settings.def order.
const std::vector<SettingSpec>& settings_table();
// nullptr when there is no such setting.
const SettingSpec* find_setting(const std::string& name);
const SettingSpec& setting(const std::string& name);  // throws std::logic_error if absent
const SettingSpec* find_setting_by_line_key(const std::string& key);
const SettingSpec* find_setting_by_flag(const std::string& flag);  // "--steps" or "-W"
std::vector<std::string> prompt_file_keys();                       // table order

// The values one source gives, checked: setting name -> JSON value.
class SettingLayer {
 public:
  SettingLayer() = default;
  explicit SettingLayer(std::string source) : source_(std::move(source)) {}
  // Sets a value the source gave; `value` must have passed the setting's check.
  void set(const std::string& name, nlohmann::json value) { values_[name] = std::move(value); }
  // Checks (SettingSpec::check) then sets; throws SettingError.
  void set_checked(const SettingSpec& spec, const nlohmann::json& value);
  const nlohmann::json* find(const std::string& name) const;
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  void erase(const std::string& name) { values_.erase(name); }
  const std::map<std::string, nlohmann::json>& values() const { return values_; }
  const std::string& source() const { return source_; }

 private:
  std::string source_;  // "the command line", "x.png", "line 3"
  std::map<std::string, nlohmann::json> values_;
};

// Built-in defaults, then each layer in order (later layers win); null layers
// are skipped. The one place overrides are layered.
Settings resolve_settings(const std::vector<const SettingLayer*>& layers);
// The last layer (of the same list) that sets `name`, or nullptr.
const SettingLayer* setting_source(const std::vector<const SettingLayer*>& layers,
                                   const std::string& name);

// Where an error about a value names it: `--steps 0` from the command line,
// `--steps 0 (from x.png)` from a PNG, `"steps" 0` in a prompt-file line.
std::string describe_flag_value(const SettingSpec& spec, const std::string& value);
std::string describe_line_value(const SettingSpec& spec, const nlohmann::json& value);

// The --json fields of a setting list (every setting with an out key).
nlohmann::json settings_json(const Settings& settings);

// ---- A1111 "parameters" text, through the table ----------------------------

// What sdgen writes for one image besides its settings.
struct ImageMetadata {
  std::string model_hash;  // first 10 hex digits of the model's SHA-256, or ""
  std::string model_name;  // the "Model:" name (a1111_model_name)
  std::string vae_hash;    // the same for a separate VAE (--vae), or ""
  std::string vae_name;
  // The LoRAs applied, A1111's "Lora hashes": (name, first 12 hex digits of
  // the SHA-256 of the file's data after its header), in order.
  std::vector<std::pair<std::string, std::string>> lora_hashes;
  // The embeddings the prompts used, A1111's "TI hashes": (name, first 12 hex
  // digits of the file's SHA-256).
  std::vector<std::pair<std::string, std::string>> ti_hashes;
  int batch_pos = 0;  // this image's place in its batch
  std::string version = SDGEN_VERSION;
};

// The A1111 fields of one image: each setting with a label, in table order,
// then "Version".
A1111Parameters a1111_parameters(const Settings& settings, const ImageMetadata& image);

// Settings read back from parameters (--from-png): every readable field as a
// checked value in `settings`; a field of the wrong type ("Steps: many") is
// skipped with a warning; a value of the right type that a setting does not
// allow ("Steps: 5000", an unknown sampler) is an error ("--steps 5000 (from
// x.png): must be ...").
struct A1111Reading {
  SettingLayer settings;
  std::vector<std::string> warnings;
  std::vector<std::string> errors;
  std::optional<int> batch_pos;  // "Batch pos": the image's place in its batch
  std::optional<std::string> model_name, model_hash, vae_name, vae_hash;
};
// `source` names the PNG in messages.
A1111Reading read_a1111_settings(const A1111Parameters& parameters, const std::string& source);

}  // namespace sdgen
