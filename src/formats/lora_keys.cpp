#include "sdgen/lora_keys.h"

#include <cctype>
#include <vector>

namespace sdgen {

namespace {

// The suffixes a layer's tensors carry after the layer's name.
const char* const kSuffixes[] = {
    ".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".alpha",      // kohya / LoCon
    ".lora_A.weight",    ".lora_B.weight",                                     // PEFT
    ".lora.down.weight", ".lora.up.weight",                                    // diffusers (old)
    ".hada_w1_a",        ".hada_w1_b",      ".hada_w2_a",       ".hada_w2_b",  // LoHa
    ".hada_t1",          ".hada_t2",                                           // LoHa, Tucker
    ".lokr_w1",          ".lokr_w2",        ".lokr_w1_a",       ".lokr_w1_b",  // LoKr
    ".lokr_w2_a",        ".lokr_w2_b",      ".lokr_t2",                        //
    ".dora_scale",       ".diff",           ".diff_b",          ".bias",       // DoRA, full diffs
};

bool has_suffix(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool split_lora_key(const std::string& key, std::string* layer, std::string* suffix) {
  for (const char* s : kSuffixes) {
    const std::string suf = s;
    if (has_suffix(key, suf)) {
      *layer = key.substr(0, key.size() - suf.size());
      *suffix = suf;
      return true;
    }
  }
  return false;
}

std::optional<LdmLayerName> split_ldm_layer_name(const std::string& name) {
  struct Block {
    const char* prefix;
    int numbers;
  };
  for (const Block b :
       {Block{"input_blocks_", 2}, Block{"output_blocks_", 2}, Block{"middle_block_", 1}}) {
    const std::string prefix = b.prefix;
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    LdmLayerName out;
    out.block = prefix.substr(0, prefix.size() - 1);
    size_t pos = prefix.size();
    for (int i = 0; i < b.numbers; ++i) {
      size_t end = pos;
      while (end < name.size() && end - pos < 6 &&
             std::isdigit(static_cast<unsigned char>(name[end])))
        ++end;
      if (end == pos || end >= name.size() || name[end] != '_') return std::nullopt;
      out.block += "." + name.substr(pos, end - pos);
      pos = end + 1;
    }
    out.rest = name.substr(pos);
    if (out.rest.empty()) return std::nullopt;
    return out;
  }
  return std::nullopt;
}

}  // namespace sdgen
