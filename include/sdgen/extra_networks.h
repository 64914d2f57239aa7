#pragma once

// A1111's extra-network syntax in prompts: "<lora:NAME:WEIGHT>" and the like
// (modules/extra_networks.py parse_prompt, extensions-builtin/Lora
// extra_networks_lora.activate). Pure functions over strings (no model), so
// that fuzzers can call them.

#include <map>
#include <string>
#include <vector>

namespace sdgen {

// One "<TYPE:ARGS>" tag: ARGS split on ':', items holding '=' are named
// ("te=0.5"), the others positional, in order (A1111 ExtraNetworkParams).
struct ExtraNetworkTag {
  std::string type;  // "lora", "hypernet", ...
  std::vector<std::string> positional;
  std::map<std::string, std::string> named;
  std::string text;  // the whole tag as written
};

struct PromptWithTags {
  std::string prompt;  // the prompt with every tag removed (what the text encoder sees)
  std::vector<ExtraNetworkTag> tags;
};

// A1111's re.sub(r"<(\w+):([^>]+)>", ...): every tag is cut out of the text
// and listed, in order; anything else (a lone '<', "<a b:c>") stays text.
PromptWithTags parse_extra_networks(const std::string& prompt);

// A LoRA to apply: its name (a file name without extension) and the weights
// of its text-encoder and UNet parts.
struct LoraRef {
  std::string name;
  double te_weight = 1.0;
  double unet_weight = 1.0;
  bool operator==(const LoraRef& o) const {
    return name == o.name && te_weight == o.te_weight && unet_weight == o.unet_weight;
  }
};

// The "lora" (and "lyco", its old alias) tags of a prompt as A1111 reads them:
// <lora:NAME>, <lora:NAME:W> (both weights W), <lora:NAME:TE:UNET>, named
// te=/unet= overriding the positional ones. Throws Error naming the tag when
// the name is missing or a weight is not a finite number.
std::vector<LoraRef> lora_refs(const PromptWithTags& parsed);

// "FILE[:WEIGHT]" of --lora and a prompt file's "loras" list: the weight
// (default 1) applies to both parts. A ':' is only taken as the separator
// when what follows is a number, so Windows-style or odd paths survive.
LoraRef parse_lora_argument(const std::string& text);

}  // namespace sdgen
