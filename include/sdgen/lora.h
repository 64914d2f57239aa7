#pragma once

// LoRA files (kohya / A1111 "lora_unet_*", "lora_te*_*"; diffusers / PEFT
// "unet.*.lora_A.weight"; LoCon convolutions; LoHa) read and matched to a
// loaded model's layers, and merged into its weights:
//
//   W' = W + sum_i weight_i * (alpha_i / rank_i) * up_i @ down_i
//
// (the product reshaped to W's shape: 1x1 and 3x3 convolutions too), computed
// in float32 and stored in the model's dtype, as kohya's networks and
// diffusers' fuse_lora apply it. The merge is undone exactly (each layer a
// LoRA touches is restored from the checkpoint file it was loaded from, or
// from a copy kept when there is none), so an image never depends on the
// LoRAs of the images before it.

#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sdgen/model.h"

namespace sdgen {

enum class LoraTarget { unet, text_encoder, text_encoder_2 };
const char* lora_target_name(LoraTarget target);  // "unet", "text_encoder", "text_encoder_2"

// One layer's low-rank update, as stored in the file.
struct LoraLayer {
  LoraTarget target = LoraTarget::unet;
  std::string parameter;             // the module parameter it changes ("...attn1.to_q.weight")
  std::string key;                   // the file's name for the layer, for messages
  bool loha = false;                 // LoHa (hada_w1_a ... ): (w1a @ w1b) * (w2a @ w2b)
  torch::Tensor up, down;            // LoRA: up [out, r, ...], down [r, in, ...]
  torch::Tensor w1a, w1b, w2a, w2b;  // LoHa
  int64_t rank = 0;
  double alpha = 0;  // the file's alpha, or the rank when it has none
  // W' - W at weight 1, float32, shaped `shape`, computed on `device`.
  torch::Tensor delta(c10::IntArrayRef shape, const torch::Device& device = torch::kCPU) const;
};

struct LoraFile {
  std::string path;
  std::string name;    // the file name without extension (what <lora:NAME> refers to)
  std::string format;  // "kohya" or "peft"
  std::string family;  // what its keys fit: "SD1.x/SD2.x" or "SDXL" (two text encoders)
  std::vector<LoraLayer> layers;
  size_t unmatched = 0;  // layers naming no module of the model (skipped)
  size_t te_layers = 0;  // layers in the text encoder(s)
  int64_t max_rank = 0;
  bool conv = false;  // has convolution (LoCon) layers
};

// Reads a .safetensors LoRA and matches its layers to `model`'s modules.
// Throws Error naming the file and, where one is at fault, the key: a
// pickle or other non-safetensors file, a file without LoRA keys, one made
// for another model family, a layer whose shape does not fit (the key and
// both shapes), NaN/Inf values, and the types not supported (LoKr, DoRA,
// Tucker-decomposed convolutions, full diffs), named.
LoraFile read_lora(const std::string& path, const StableDiffusionModel& model);

// What read_lora tells about a file without a model (for --info): format,
// family, layers, rank, from the keys and shapes alone.
struct LoraSummary {
  std::string format, family;
  size_t layers = 0, te_layers = 0, unet_layers = 0;
  int64_t max_rank = 0;
  bool conv = false, loha = false;
};
LoraSummary summarize_lora(const std::string& path);

// Merges LoRAs into a model's weights and takes them out again exactly. One
// merger per model; it restores the model when destroyed.
class LoraMerger {
 public:
  explicit LoraMerger(StableDiffusionModel& model);
  ~LoraMerger();
  LoraMerger(const LoraMerger&) = delete;
  LoraMerger& operator=(const LoraMerger&) = delete;

  struct Item {
    const LoraFile* file = nullptr;
    double te_weight = 1.0;
    double unet_weight = 1.0;
  };
  // Makes the model's weights its originals plus the given LoRAs (an empty
  // list: the originals, bit for bit). Layers are written in place, so CUDA
  // graphs captured on the weights see the new values.
  void apply(const std::vector<Item>& loras);
  void restore() { apply({}); }
  // Seconds the last apply() took (device work included).
  double last_apply_seconds() const { return last_seconds_; }
  // Layers whose originals are held as copies (the others are read back from
  // the model's mapped checkpoint file when restored).
  size_t copies_kept() const { return originals_.size() - from_file_.size(); }
  // Bytes of the copies apply(loras) would add (layers it touches for the
  // first time that have no file source: GPU models); for the memory check.
  int64_t new_copy_bytes(const std::vector<Item>& loras) const;

 private:
  torch::Tensor parameter(const std::string& id);
  // W as loaded, in any dtype that converts to `w`'s exactly (for `id`'s
  // first merge: the mapped file tensor it was loaded from, or a copy).
  torch::Tensor original(const std::string& id, const torch::Tensor& w);
  void put_back(const std::string& id);  // W <- its original, bit for bit

  StableDiffusionModel& model_;
  std::map<std::string, torch::Tensor> parameters_;  // "target:parameter" -> the model's tensor
  // "target:parameter" -> W as loaded: a view of the model's mapped file
  // (StableDiffusionModel::weight_sources: nothing resident, read back on
  // restore) or, when there is none (GPU models, computed tensors), a copy.
  std::map<std::string, torch::Tensor> originals_;
  std::map<std::string, bool> from_file_;  // originals_ entries that are file views
  std::vector<std::string> touched_;       // what the active set changed
  double last_seconds_ = 0;
};

}  // namespace sdgen
