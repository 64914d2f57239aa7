// The rows of the settings table, built from sdgen/settings.def: each row's
// value conversions (text, JSON, the field), its allowed values and its A1111
// fields. CONTRIBUTING.md explains how to add a setting.

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "formats/strings.h"
#include "sdgen/a1111.h"
#include "sdgen/error.h"
#include "sdgen/extra_networks.h"
#include "sdgen/output_pattern.h"
#include "sdgen/settings.h"

namespace sdgen {
namespace {

using nlohmann::json;

constexpr const char* kGeneration = "Generation";
constexpr const char* kModel = "Model";
constexpr const char* kOutput = "Output and batch jobs";

using formats::strip;

// ---- Rules: the allowed values ------------------------------------------------

struct Rule {
  enum class Kind { any, range, image_size, flag };
  Kind kind = Kind::any;
  double lo = 0, hi = 0;
  bool lo_open = false;  // (lo, hi] instead of [lo, hi]
  bool is_path = false;  // a file or folder (--help says PATH)
  // Extra check of a text value (output patterns, shards); throws SettingError.
  std::function<void(const std::string&)> check_text;

  // "" or why `v` is not allowed.
  std::string problem(double v) const {
    if (kind == Kind::image_size)
      return v <= 0 || std::fmod(v, 8) != 0 || v > 8192
                 ? "must be a positive multiple of 8, at most 8192"
                 : "";
    if (kind != Kind::range) return "";
    if (lo_open ? !(v > lo) || v > hi : !(v >= lo) || v > hi)
      return lo_open ? "must be in (" + a1111_number(lo) + ", " + a1111_number(hi) + "]"
                     : "must be between " + a1111_number(lo) + " and " + a1111_number(hi);
    return "";
  }
  std::string allowed() const {
    if (is_path) return "a path";
    if (kind == Kind::image_size) return "a positive multiple of 8, at most 8192";
    if (kind != Kind::range) return "";
    return lo_open ? "(" + a1111_number(lo) + ", " + a1111_number(hi) + "]"
                   : a1111_number(lo) + " to " + a1111_number(hi);
  }
};

namespace rule {
Rule text() { return {}; }
Rule path() {
  Rule r;
  r.is_path = true;
  return r;
}
Rule choice() { return {}; }
Rule seed() { return {}; }
Rule of_kind(Rule::Kind kind, double lo = 0, double hi = 0, bool lo_open = false) {
  Rule r;
  r.kind = kind;
  r.lo = lo;
  r.hi = hi;
  r.lo_open = lo_open;
  return r;
}
Rule flag() { return of_kind(Rule::Kind::flag); }
Rule integer(double lo, double hi) { return of_kind(Rule::Kind::range, lo, hi); }
Rule number(double lo, double hi) { return of_kind(Rule::Kind::range, lo, hi); }
Rule number_above(double lo, double hi) { return of_kind(Rule::Kind::range, lo, hi, true); }
Rule image_size() { return of_kind(Rule::Kind::image_size); }
Rule output_pattern() {
  Rule r;
  r.check_text = [](const std::string& pattern) {
    if (pattern.empty()) throw SettingError("must not be empty");
    try {
      expand_output_pattern(pattern, OutputFields{});
    } catch (const Error& e) {
      throw SettingError(e.what());
    }
  };
  return r;
}
// "" (unset: the pipeline's default) or a pair parse_wxh / parse_top_left takes.
Rule wxh() {
  Rule r;
  r.check_text = [](const std::string& text) {
    if (!text.empty()) parse_wxh(text);
  };
  return r;
}
Rule top_left() {
  Rule r;
  r.check_text = [](const std::string& text) {
    if (!text.empty()) parse_top_left(text);
  };
  return r;
}
// "" (the model's scheduler config) or one of diffusers' timestep_spacing values.
Rule timestep_spacing() {
  Rule r;
  r.check_text = [](const std::string& text) {
    if (!text.empty() && text != "leading" && text != "trailing" && text != "linspace")
      throw SettingError("must be leading, trailing or linspace");
  };
  return r;
}
// A LoRA argument, FILE[:WEIGHT] (parse_lora_argument).
Rule lora() {
  Rule r;
  r.check_text = [](const std::string& text) {
    try {
      parse_lora_argument(text);
    } catch (const Error& e) {
      std::string why = e.what();
      const auto colon = why.find(": ");
      throw SettingError(colon == std::string::npos ? why : why.substr(colon + 2));
    }
  };
  return r;
}
Rule shard() {
  Rule r;
  r.check_text = [](const std::string& text) {
    try {
      parse_shard(text);
    } catch (const Error& e) {
      // parse_shard names the flag itself: keep the reason only.
      std::string why = e.what();
      const auto colon = why.find(": ");
      throw SettingError(colon == std::string::npos ? why : why.substr(colon + 2));
    }
  };
  return r;
}
}  // namespace rule

// ---- Codecs: text and JSON to each field type ----------------------------------

std::string choices_text(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i)
    s += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
  return s;
}

int64_t whole_number(const json& v) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      throw SettingError("is too large");
    return static_cast<int64_t>(v.get<uint64_t>());
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
      std::fabs(v.get<double>()) < 9e15)
    return static_cast<int64_t>(v.get<double>());
  throw SettingError("must be a whole number", true);
}

template <typename T>
struct Codec;

template <>
struct Codec<int> {
  static json from_text(const std::string& text) {
    const std::string t = strip(text);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(t.c_str(), &end, 10);
    if (t.empty() || errno != 0 || end != t.c_str() + t.size())
      throw SettingError("must be a whole number", true);
    return v;
  }
  static json check(const json& v) {
    const int64_t n = whole_number(v);
    if (n < std::numeric_limits<int>::min() || n > std::numeric_limits<int>::max())
      throw SettingError("is out of range");
    return n;
  }
  static json to_json(int v) { return v; }
  static int from_json(const json& v) { return v.get<int>(); }
  static double numeric(const json& v) { return static_cast<double>(v.get<int64_t>()); }
};

template <>
struct Codec<double> {
  static json from_text(const std::string& text) {
    const std::string t = strip(text);
    char* end = nullptr;
    const double v = std::strtod(t.c_str(), &end);
    if (t.empty() || end != t.c_str() + t.size() || std::isnan(v))
      throw SettingError("must be a number", true);
    return v;
  }
  static json check(const json& v) {
    if (!v.is_number()) throw SettingError("must be a number", true);
    return v.get<double>();
  }
  static json to_json(double v) { return v; }
  static double from_json(const json& v) { return v.get<double>(); }
  static double numeric(const json& v) { return v.get<double>(); }
};

template <>
struct Codec<bool> {
  static json from_text(const std::string& text) {
    const std::string t = strip(text);
    // "True"/"False": Python's spelling, as A1111 writes its flags.
    if (t == "true" || t == "True" || t == "1" || t == "on") return true;
    if (t == "false" || t == "False" || t == "0" || t == "off") return false;
    throw SettingError("must be true or false", true);
  }
  static json check(const json& v) {
    if (!v.is_boolean()) throw SettingError("must be true or false", true);
    return v;
  }
  static json to_json(bool v) { return v; }
  static bool from_json(const json& v) { return v.get<bool>(); }
};

template <>
struct Codec<std::string> {
  static json from_text(const std::string& text) { return text; }
  static json check(const json& v) {
    if (!v.is_string()) throw SettingError("must be a string", true);
    return v;
  }
  static json to_json(const std::string& v) { return v; }
  static std::string from_json(const json& v) { return v.get<std::string>(); }
};

// A list of strings: each flag occurrence or text is one item; JSON takes a
// string (one item) or an array of strings.
template <>
struct Codec<std::vector<std::string>> {
  static json from_text(const std::string& text) { return json::array({text}); }
  static json check(const json& v) {
    if (v.is_string()) return json::array({v});
    if (!v.is_array()) throw SettingError("must be a string or a list of strings", true);
    for (const auto& item : v)
      if (!item.is_string()) throw SettingError("must be a list of strings", true);
    return v;
  }
  static json to_json(const std::vector<std::string>& v) { return v; }
  static std::vector<std::string> from_json(const json& v) {
    return v.get<std::vector<std::string>>();
  }
};

// Seeds are unsigned 64-bit: A1111 writes them as they are.
template <>
struct Codec<std::optional<uint64_t>> {
  static json from_text(const std::string& text) {
    const std::string t = strip(text);
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(t.c_str(), &end, 10);
    if (t.empty() || t[0] == '-' || errno != 0 || end != t.c_str() + t.size())
      throw SettingError("must be a whole number from 0 to 18446744073709551615", true);
    return uint64_t(v);
  }
  static json check(const json& v) {
    if (v.is_number_unsigned()) return v;
    const int64_t n = whole_number(v);
    if (n < 0) throw SettingError("must be a whole number from 0 to 18446744073709551615");
    return uint64_t(n);
  }
  static json to_json(const std::optional<uint64_t>& v) { return v ? json(*v) : json(nullptr); }
  static std::optional<uint64_t> from_json(const json& v) {
    if (v.is_null()) return std::nullopt;
    return v.get<uint64_t>();
  }
};

// Enumerations: the canonical name in JSON; any accepted spelling in.
template <typename E>
struct EnumCodec {
  static json from_text(const std::string& text) { return to_string(parse(text)); }
  static json check(const json& v) {
    if (!v.is_string()) throw SettingError("must be a string", true);
    return to_string(parse(v.get<std::string>()));
  }
  static json to_json(const E& v) { return to_string(v); }
  static E from_json(const json& v) { return parse(v.get<std::string>()); }
  static E parse(const std::string& text);
  static std::string expected();
};

template <>
std::string EnumCodec<Sampler>::expected() {
  std::string valid;
  for (const auto& n : sampler_names()) valid += (valid.empty() ? "" : ", ") + n;
  return valid;
}
template <>
Sampler EnumCodec<Sampler>::parse(const std::string& text) {
  if (auto s = find_sampler(strip(text))) return *s;
  throw SettingError("unknown sampler (valid: " + expected() + ")");
}

#define SDGEN_ENUM_CODEC(TYPE, PARSE, EXPECTED)          \
  template <>                                            \
  std::string EnumCodec<TYPE>::expected() {              \
    return choices_text(EXPECTED);                       \
  }                                                      \
  template <>                                            \
  TYPE EnumCodec<TYPE>::parse(const std::string& text) { \
    if (auto v = PARSE(strip(text))) return *v;          \
    throw SettingError("expected " + expected());        \
  }                                                      \
  template <>                                            \
  struct Codec<TYPE> : EnumCodec<TYPE> {};

SDGEN_ENUM_CODEC(SigmaSchedule, parse_sigma_schedule,
                 (std::vector<std::string>{"karras", "normal", "automatic"}))
SDGEN_ENUM_CODEC(PredictionType, parse_prediction_type, (std::vector<std::string>{"epsilon", "v"}))
SDGEN_ENUM_CODEC(LongPromptMode, parse_long_prompt_mode,
                 (std::vector<std::string>{"chunks", "truncate"}))
SDGEN_ENUM_CODEC(DtypeChoice, parse_dtype_choice,
                 (std::vector<std::string>{"auto", "fp32", "fp16", "bf16"}))
SDGEN_ENUM_CODEC(ChannelsLast, parse_channels_last, (std::vector<std::string>{"on", "off", "auto"}))
SDGEN_ENUM_CODEC(DeviceChoice, parse_device_choice,
                 (std::vector<std::string>{"auto", "cpu", "cuda", "cuda:N"}))
#undef SDGEN_ENUM_CODEC

template <>
struct Codec<Sampler> : EnumCodec<Sampler> {};

// ---- A1111 fields ----------------------------------------------------------------

struct A1111Hooks {
  std::string label;
  std::function<void(const SettingSpec&, const Settings&, const ImageMetadata&, A1111Parameters&)>
      write;
  std::function<void(const SettingSpec&, const A1111Parameters&, A1111Reading&)> read;
};

// The text A1111 writes for a value: integers as they are, other numbers in
// their shortest form ("7", "7.5"), strings as they are.
std::string a1111_text(const json& v) {
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  if (v.is_number_float()) return a1111_number(v.get<double>());
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

// Reads `text` into `spec`'s value of the reading; a value of the wrong type is
// a warning, a value the setting does not allow an error naming the PNG.
void read_value(const SettingSpec& spec, const std::string& label, const std::string& text,
                A1111Reading& r) {
  try {
    r.settings.set(spec.name, spec.from_text(text));
  } catch (const SettingError& e) {
    if (e.unreadable())
      r.warnings.push_back(label + " '" + text + "': " + e.what() + "; ignored");
    else
      r.errors.push_back(describe_flag_value(spec, strip(text)) + " (from " + r.settings.source() +
                         "): " + e.what());
  }
}

namespace a1111 {
A1111Hooks none() { return {}; }

A1111Hooks prompt() {
  return {"",
          [](const SettingSpec&, const Settings& s, const ImageMetadata&, A1111Parameters& p) {
            p.prompt = s.prompt;
          },
          [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
            r.settings.set(spec.name, p.prompt);
          }};
}

A1111Hooks negative_prompt() {
  return {"Negative prompt",
          [](const SettingSpec&, const Settings& s, const ImageMetadata&, A1111Parameters& p) {
            p.negative_prompt = s.negative_prompt;
          },
          [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
            r.settings.set(spec.name, p.negative_prompt);
          }};
}

// Written when `write_if` holds; read back when present, else (with
// `absent_is_default`) read as the default A1111 left out.
A1111Hooks field(const std::string& label, std::function<bool(const json&)> write_if,
                 bool absent_is_default) {
  return {label,
          [label, write_if](const SettingSpec& spec, const Settings& s, const ImageMetadata&,
                            A1111Parameters& p) {
            const json v = spec.get(s);
            if (!v.is_null() && write_if(v)) p.set(label, a1111_text(v));
          },
          [label, absent_is_default](const SettingSpec& spec, const A1111Parameters& p,
                                     A1111Reading& r) {
            if (const auto* v = p.find(label))
              read_value(spec, label, *v, r);
            else if (absent_is_default)
              r.settings.set(spec.name, spec.get(Settings{}));
          }};
}

// Written when the value is not empty (a text setting that is set); a
// missing field reads as unset.
A1111Hooks when_set(const std::string& label) {
  return field(
      label, [](const json& v) { return !v.get<std::string>().empty(); }, true);
}

A1111Hooks always(const std::string& label) {
  return field(
      label, [](const json&) { return true; }, false);
}

// Left out at (or below) `threshold`, A1111's way for Clip skip and the CFG
// Rescale extension's field; a missing field reads as the default.
A1111Hooks above(const std::string& label, double threshold) {
  return field(
      label, [threshold](const json& v) { return v.get<double>() > threshold; }, true);
}

// "Eta DDIM" (A1111's DDIM eta; "Eta" in older versions).
A1111Hooks eta() {
  A1111Hooks h = above("Eta DDIM", 0);
  h.read = [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
    for (const char* label : {"Eta DDIM", "Eta"})
      if (const auto* v = p.find(label)) return read_value(spec, label, *v, r);
    r.settings.set(spec.name, spec.get(Settings{}));
  };
  return h;
}

A1111Hooks sampler() {
  return {"Sampler",
          [](const SettingSpec&, const Settings& s, const ImageMetadata&, A1111Parameters& p) {
            p.set("Sampler", sampler_info(s.sampler).a1111_label);
          },
          [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
            const auto* v = p.find("Sampler");
            if (!v) return;
            const std::string label = strip(*v);
            // A1111's own labels first ("DPM++ 2M" is dpmpp_2m), then the pre-1.9
            // ones with the schedule in the name, then any name sdgen takes.
            for (const auto& info : sampler_registry()) {
              if (label == info.a1111_label) return r.settings.set(spec.name, info.name);
              if (*info.a1111_karras_label && label == info.a1111_karras_label) {
                r.settings.set(spec.name, info.name);
                return r.settings.set("schedule", to_string(SigmaSchedule::karras));
              }
            }
            read_value(spec, "Sampler", label, r);
          }};
}

A1111Hooks schedule() {
  return {"Schedule type",
          [](const SettingSpec&, const Settings& s, const ImageMetadata&, A1111Parameters& p) {
            if (s.schedule == SigmaSchedule::karras || s.sampler == Sampler::dpmpp_2m_karras)
              p.set("Schedule type", "Karras");
            else if (s.schedule == SigmaSchedule::normal)
              p.set("Schedule type", "Normal");
          },
          [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
            const auto* v = p.find("Schedule type");
            if (!v) return;
            const std::string t = strip(*v);
            if (t == "Karras")
              r.settings.set(spec.name, to_string(SigmaSchedule::karras));
            else if (t == "Normal" || t == "Uniform")
              r.settings.set(spec.name, to_string(SigmaSchedule::normal));
            else if (t == "Automatic")
              r.settings.set(spec.name, to_string(SigmaSchedule::automatic));
            else
              r.warnings.push_back("Schedule type '" + t +
                                   "' is not supported (Karras, Normal, Automatic); the "
                                   "sampler's own schedule is used");
          }};
}

// "Size: WxH", written and read by the width row for both.
A1111Hooks size() {
  return {"Size",
          [](const SettingSpec&, const Settings& s, const ImageMetadata&, A1111Parameters& p) {
            p.set("Size", std::to_string(s.width) + "x" + std::to_string(s.height));
          },
          [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
            const auto* v = p.find("Size");
            if (!v) return;
            const auto x = v->find('x');
            try {
              if (x == std::string::npos) throw SettingError("", true);
              const json w = Codec<int>::from_text(v->substr(0, x));
              const json h = Codec<int>::from_text(v->substr(x + 1));
              if (w.get<int64_t>() <= 0 || h.get<int64_t>() <= 0) throw SettingError("", true);
            } catch (const SettingError&) {
              r.warnings.push_back("Size '" + *v + "' is not WIDTHxHEIGHT; ignored");
              return;
            }
            read_value(spec, "Size", v->substr(0, x), r);
            read_value(setting("height"), "Size", v->substr(x + 1), r);
          }};
}
A1111Hooks size_height() { return {"Size", nullptr, nullptr}; }

// "Model hash" and "Model" describe the checkpoint (ImageMetadata); reading
// them back only warns when another model is used.
A1111Hooks model() {
  return {"Model",
          [](const SettingSpec&, const Settings&, const ImageMetadata& m, A1111Parameters& p) {
            if (!m.model_hash.empty()) p.set("Model hash", m.model_hash);
            if (!m.model_name.empty()) p.set("Model", m.model_name);
          },
          [](const SettingSpec&, const A1111Parameters& p, A1111Reading& r) {
            if (const auto* v = p.find("Model")) r.model_name = *v;
            if (const auto* v = p.find("Model hash")) r.model_hash = *v;
          }};
}

// --lora files: sdgen's own "LoRA files" field (FILE:WEIGHT, comma-separated),
// read back into the list. (LoRAs named in the prompt stay in its text, as
// A1111 keeps them; A1111's "Lora hashes" comes from ImageMetadata.)
A1111Hooks lora_files() {
  return {"LoRA files",
          [](const SettingSpec&, const Settings& s, const ImageMetadata& m, A1111Parameters& p) {
            std::string text;
            for (const auto& item : s.lora) text += (text.empty() ? "" : ", ") + item;
            if (!text.empty()) p.set("LoRA files", text);
            std::string hashes;
            for (const auto& [name, hash] : m.lora_hashes)
              hashes += (hashes.empty() ? "" : ", ") + name + ": " + hash;
            if (!hashes.empty()) p.set("Lora hashes", hashes);
            std::string ti;
            for (const auto& [name, hash] : m.ti_hashes)
              ti += (ti.empty() ? "" : ", ") + name + ": " + hash;
            if (!ti.empty()) p.set("TI hashes", ti);
          },
          [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
            const auto* v = p.find("LoRA files");
            if (!v) return;
            json items = json::array();
            size_t start = 0;
            while (start <= v->size()) {
              const size_t comma = v->find(", ", start);
              const std::string item = strip(
                  v->substr(start, comma == std::string::npos ? std::string::npos : comma - start));
              if (!item.empty()) items.push_back(item);
              if (comma == std::string::npos) break;
              start = comma + 2;
            }
            try {
              r.settings.set(spec.name, spec.check(items));
            } catch (const SettingError& e) {
              r.errors.push_back("LoRA files '" + *v + "' (from " + r.settings.source() +
                                 "): " + e.what());
            }
          }};
}

// "VAE hash" and "VAE": the separate VAE's file (A1111's sd_vae
// get_loaded_vae_hash / get_loaded_vae_name: the file's name with its
// extension); read back for a warning when it is not the one in use.
A1111Hooks vae() {
  return {"VAE",
          [](const SettingSpec&, const Settings&, const ImageMetadata& m, A1111Parameters& p) {
            if (!m.vae_hash.empty()) p.set("VAE hash", m.vae_hash);
            if (!m.vae_name.empty()) p.set("VAE", m.vae_name);
          },
          [](const SettingSpec&, const A1111Parameters& p, A1111Reading& r) {
            if (const auto* v = p.find("VAE")) r.vae_name = *v;
            if (const auto* v = p.find("VAE hash")) r.vae_hash = *v;
          }};
}

// "Denoising strength": img2img only.
A1111Hooks strength() {
  A1111Hooks h = always("Denoising strength");
  h.write = [](const SettingSpec& spec, const Settings& s, const ImageMetadata&,
               A1111Parameters& p) {
    if (!s.init_image.empty()) p.set("Denoising strength", a1111_text(spec.get(s)));
  };
  return h;
}

// "Mask blur": written for every inpainted image, as A1111 writes it (its
// value matters with --paste-back only); read back as it is.
A1111Hooks mask_blur() {
  A1111Hooks h = always("Mask blur");
  h.write = [](const SettingSpec& spec, const Settings& s, const ImageMetadata&,
               A1111Parameters& p) {
    if (!s.mask.empty()) p.set("Mask blur", a1111_text(spec.get(s)));
  };
  return h;
}

// "Paste back: True" (sdgen's own field; A1111 always pastes back).
A1111Hooks paste_back() {
  A1111Hooks h = field(
      "Paste back", [](const json& v) { return v.get<bool>(); }, true);
  h.write = [](const SettingSpec&, const Settings& s, const ImageMetadata&, A1111Parameters& p) {
    if (s.paste_back && !s.mask.empty()) p.set("Paste back", "True");
  };
  return h;
}

// Images of one batch share one noise tensor (diffusers' convention), so
// reproducing image i needs the batch: A1111's old "Batch size/pos" fields.
A1111Hooks batch() {
  return {"Batch size",
          [](const SettingSpec&, const Settings& s, const ImageMetadata& m, A1111Parameters& p) {
            if (s.batch_size <= 1) return;
            p.set("Batch size", std::to_string(s.batch_size));
            p.set("Batch pos", std::to_string(m.batch_pos));
          },
          [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
            if (const auto* v = p.find("Batch size")) read_value(spec, "Batch size", *v, r);
            if (const auto* v = p.find("Batch pos")) {
              try {
                const auto n = Codec<int>::from_text(*v).get<int64_t>();
                if (n < 0 || n > 999) throw SettingError("", true);
                r.batch_pos = static_cast<int>(n);
              } catch (const SettingError&) {
                r.warnings.push_back("Batch pos '" + *v +
                                     "' is not a whole number in [0, 999]; ignored");
              }
            }
          }};
}

// "Long prompt: truncate" (sdgen's own field): diffusers' truncation.
A1111Hooks long_prompt() {
  return {"Long prompt",
          [](const SettingSpec&, const Settings& s, const ImageMetadata&, A1111Parameters& p) {
            if (s.long_prompt == LongPromptMode::truncate) p.set("Long prompt", "truncate");
          },
          [](const SettingSpec& spec, const A1111Parameters& p, A1111Reading& r) {
            if (const auto* v = p.find("Long prompt"))
              r.settings.set(spec.name,
                             to_string(strip(*v) == "truncate" ? LongPromptMode::truncate
                                                               : LongPromptMode::chunks));
          }};
}
}  // namespace a1111

// ---- Rows --------------------------------------------------------------------------

template <typename T>
json checked(const Rule& rule, const json& value) {
  if constexpr (std::is_same_v<T, int> || std::is_same_v<T, double>) {
    const std::string why = rule.problem(Codec<T>::numeric(value));
    if (!why.empty()) throw SettingError(why);
  }
  if constexpr (std::is_same_v<T, std::string>) {
    if (rule.check_text) rule.check_text(value.get<std::string>());
  }
  if constexpr (std::is_same_v<T, std::vector<std::string>>) {
    if (rule.check_text)
      for (const auto& item : value) rule.check_text(item.get<std::string>());
  }
  return value;
}

template <typename T>
SettingSpec make_row(T Settings::*field, const T& default_value, const char* name,
                     const char* flags, const char* group, Rule rule, const char* line_key,
                     const char* out_key, A1111Hooks a1111_hooks, const char* api_key,
                     const char* help) {
  SettingSpec s;
  s.name = name;
  s.flags = flags;
  s.flag = s.flags.substr(s.flags.find("--"));
  s.group = group;
  s.help = help;
  s.line_key = line_key;
  s.out_key = out_key;
  s.a1111_label = a1111_hooks.label;
  s.api_key = api_key;
  s.is_flag = rule.kind == Rule::Kind::flag;
  s.is_list = std::is_same_v<T, std::vector<std::string>>;
  s.allowed = rule.allowed();
  const json d = Codec<T>::to_json(default_value);
  const bool shown = !s.is_flag && !d.is_null() && !(d.is_array() && d.empty()) &&
                     !(d.is_string() && d.get<std::string>().empty()) &&
                     (!d.is_number() || rule.problem(d.get<double>()).empty());
  if (shown) s.default_text = a1111_text(d);
  s.from_text = [rule](const std::string& text) {
    return checked<T>(rule, Codec<T>::from_text(text));
  };
  s.check = [rule](const json& v) { return checked<T>(rule, Codec<T>::check(v)); };
  s.get = [field](const Settings& settings) { return Codec<T>::to_json(settings.*field); };
  s.set = [field](Settings& settings, const json& v) { settings.*field = Codec<T>::from_json(v); };
  if (a1111_hooks.write)
    s.write_a1111 = [w = a1111_hooks.write, n = s.name](
                        const Settings& settings, const ImageMetadata& m, A1111Parameters& p) {
      w(setting(n), settings, m, p);
    };
  if (a1111_hooks.read)
    s.read_a1111 = [rd = a1111_hooks.read, n = s.name](const A1111Parameters& p, A1111Reading& r) {
      rd(setting(n), p, r);
    };
  return s;
}

#define SDGEN_SETTING_ROW(TYPE, FIELD, DEFAULT, FLAGS, GROUP, RULE, LINE_KEY, OUT_KEY, A1111,    \
                          API_KEY, HELP)                                                         \
  make_row<TYPE>(&Settings::FIELD, TYPE(DEFAULT), #FIELD, FLAGS, GROUP, RULE, LINE_KEY, OUT_KEY, \
                 A1111, API_KEY, HELP),

}  // namespace

const std::vector<SettingSpec>& settings_table() {
  static const std::vector<SettingSpec> table = {SDGEN_SETTINGS(SDGEN_SETTING_ROW)};
  return table;
}

}  // namespace sdgen
