#pragma once

// The names inside LoRA files, parsed without a model (so fuzzers can call
// them): which layer a tensor belongs to, and the block a kohya LDM-style
// UNet layer name starts with. src/lora.cpp matches the results to a model.

#include <optional>
#include <string>

namespace sdgen {

// "lora_unet_x.lora_down.weight" -> layer "lora_unet_x", suffix
// ".lora_down.weight": the known suffixes of kohya, LoCon, LoHa, LoKr, DoRA,
// PEFT and old diffusers files. False (outputs untouched) for other keys.
bool split_lora_key(const std::string& key, std::string* layer, std::string* suffix);

// A kohya UNet layer name in LDM style (after "lora_unet_"), split into its
// block, dotted ("input_blocks.4.1", "middle_block.1", "output_blocks.3.0"),
// and what follows, as written ("transformer_blocks_0_attn1_to_q",
// "in_layers_2"). nullopt when it does not start with such a block.
struct LdmLayerName {
  std::string block;
  std::string rest;
};
std::optional<LdmLayerName> split_ldm_layer_name(const std::string& name);

}  // namespace sdgen
