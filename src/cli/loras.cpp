#include "loras.h"

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "formats/strings.h"
#include "sdgen/error.h"
#include "sdgen/sha256.h"
#include "sdgen/torch_checkpoint.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

LoraLibrary::LoraLibrary(StableDiffusionModel& model, std::vector<std::string> dirs, bool quiet)
    : model_(model), dirs_(std::move(dirs)), quiet_(quiet) {
  if (const char* env = std::getenv("SDGEN_LORA_DIR"))
    for (auto& dir : formats::split_path_list(env)) dirs_.push_back(dir);
}

LoraLibrary::~LoraLibrary() = default;

// A name is a path when it names an existing file (or holds a '/'); else
// NAME.safetensors is looked for in each folder and its subfolders, as
// A1111 lists its Lora folder.
std::string LoraLibrary::find(const std::string& name) const {
  std::error_code ec;
  if (names_only_ &&
      (name.find_first_of("/\\") != std::string::npos || name.find("..") != std::string::npos))
    throw Error("LoRA '" + name +
                "': a request names LoRAs by name only (as in --lora-dir), never by path");
  if (!names_only_ && fs::is_regular_file(name, ec)) return name;
  if (name.find('/') != std::string::npos) throw Error("LoRA file " + name + " not found");
  std::vector<std::string> pickled;
  for (const auto& dir : dirs_) {
    if (!fs::is_directory(dir, ec)) continue;
    for (auto it = fs::recursive_directory_iterator(
             dir, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (!it->is_regular_file(ec) || it->path().stem().string() != name) continue;
      const std::string ext = it->path().extension().string();
      if (ext == ".safetensors") return it->path().string();
      if (is_pickle_file_name(it->path().string())) pickled.push_back(it->path().string());
    }
  }
  if (!pickled.empty()) throw Error(pickle_refusal(pickled.front(), "LoRA files"));
  std::string where;
  for (const auto& d : dirs_) where += (where.empty() ? "" : ", ") + d;
  throw Error("unknown LoRA '" + name + "': no " + name + ".safetensors in " +
              (where.empty() ? std::string("any folder (give --lora-dir DIR or set SDGEN_LORA_DIR)")
                             : where));
}

const LoraFile& LoraLibrary::load(const std::string& path) {
  const std::string key = fs::weakly_canonical(path).string();
  auto it = files_.find(key);
  if (it == files_.end()) {
    LoraFile file = read_lora(path, model_);
    if (file.unmatched > 0 && !quiet_)
      std::cerr << "sdgen: warning: " << path << ": " << file.unmatched << " of its "
                << file.unmatched + file.layers.size() << " LoRA layers name no layer of this "
                << model_.family << " model; they are skipped\n";
    const std::string hash = safetensors_data_sha256_hex(path).substr(0, 12);
    it = files_.emplace(key, std::make_pair(std::move(file), hash)).first;
  }
  return it->second.first;
}

std::vector<AppliedLora> LoraLibrary::resolve(const Settings& s) {
  std::vector<LoraRef> refs = lora_refs(parse_extra_networks(s.prompt));
  for (const auto& item : s.lora) refs.push_back(parse_lora_argument(item));
  std::vector<AppliedLora> out;
  for (const auto& ref : refs) {
    AppliedLora a;
    a.name = ref.name;
    if (fs::path(ref.name).extension() == ".safetensors") a.name = fs::path(ref.name).stem();
    a.file = &load(find(ref.name));
    a.hash = files_.at(fs::weakly_canonical(a.file->path).string()).second;
    a.te_weight = ref.te_weight;
    a.unet_weight = ref.unet_weight;
    out.push_back(a);
  }
  return out;
}

int64_t LoraLibrary::new_copy_bytes(const std::vector<AppliedLora>& loras) {
  if (loras.empty()) return 0;
  if (!merger_) merger_ = std::make_unique<LoraMerger>(model_);
  std::vector<LoraMerger::Item> items;
  for (const auto& l : loras) items.push_back({l.file, l.te_weight, l.unet_weight});
  return merger_->new_copy_bytes(items);
}

void LoraLibrary::activate(const std::vector<AppliedLora>& loras) {
  merge_s_ = 0;
  if (loras == active_) return;
  if (!merger_) merger_ = std::make_unique<LoraMerger>(model_);
  std::vector<LoraMerger::Item> items;
  for (const auto& l : loras) items.push_back({l.file, l.te_weight, l.unet_weight});
  active_.clear();  // unknown if apply throws half-way; restore() below then reapplies
  try {
    merger_->apply(items);
  } catch (...) {
    merger_->restore();
    throw;
  }
  active_ = loras;
  merge_s_ = merger_->last_apply_seconds();
}

}  // namespace sdgen::cli
