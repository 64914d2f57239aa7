#pragma once

// The LoRAs of a run: where their files are (--lora-dir, $SDGEN_LORA_DIR),
// each file read once, and the set merged into the model for each image
// (sdgen/lora.h), so that an image never depends on the lines before it.

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "sdgen/extra_networks.h"
#include "sdgen/lora.h"
#include "sdgen/settings.h"

namespace sdgen::cli {

// One LoRA of an image: the file (read and matched to the model) and weights.
struct AppliedLora {
  std::string name;  // as the prompt or --lora named it (A1111's "Lora hashes" name)
  std::string hash;  // first 12 hex digits of the file's addnet hash
  const LoraFile* file = nullptr;
  double te_weight = 1, unet_weight = 1;
  bool operator==(const AppliedLora& o) const {
    return file == o.file && te_weight == o.te_weight && unet_weight == o.unet_weight;
  }
};

class LoraLibrary {
 public:
  // dirs: --lora-dir values; $SDGEN_LORA_DIR (':'-separated) is added after them.
  // quiet: no warning about layers a file has that the model lacks.
  LoraLibrary(StableDiffusionModel& model, std::vector<std::string> dirs, bool quiet = false);
  ~LoraLibrary();

  // The LoRAs an image's settings ask for: the prompt's <lora:...> tags, then
  // --lora / "loras". Throws Error naming the tag or file (unknown name with
  // the folders searched, a pickle, a file for another model, ...).
  std::vector<AppliedLora> resolve(const Settings& settings);
  // Bytes of weight copies activate(loras) would add (the memory check).
  int64_t new_copy_bytes(const std::vector<AppliedLora>& loras);
  // Merges exactly `loras` into the model (nothing when it is already so).
  void activate(const std::vector<AppliedLora>& loras);
  // `sdgen serve`: names are looked up in the folders only, never taken as
  // paths (resolve throws Error for a name that holds '/', '\\' or "..").
  void set_names_only(bool names_only) { names_only_ = names_only; }
  // Seconds the last merge that changed the model took (0 when none did).
  double last_merge_seconds() const { return merge_s_; }

 private:
  std::string find(const std::string& name) const;
  const LoraFile& load(const std::string& path);

  StableDiffusionModel& model_;
  std::vector<std::string> dirs_;
  bool quiet_ = false;
  bool names_only_ = false;
  std::map<std::string, std::pair<LoraFile, std::string>> files_;  // path -> file, hash
  std::unique_ptr<LoraMerger> merger_;
  std::vector<AppliedLora> active_;
  double merge_s_ = 0;
};

}  // namespace sdgen::cli
