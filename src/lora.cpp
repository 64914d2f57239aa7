// LoRA files: key parsing, matching to a model's modules, merge and un-merge.
// Formulas: kohya sd-scripts networks/lora.py (LoRAModule: up(down(x)) *
// multiplier * alpha / rank, merge_to: weight + up @ down * multiplier *
// scale, 1x1 and 3x3 convolutions), LyCORIS / A1111 extensions-builtin/Lora
// network_hada.py (LoHa: (w1a @ w1b) * (w2a @ w2b) * alpha / rank) and
// diffusers' _convert_kohya_lora_to_diffusers / PEFT for the key names.

#include "sdgen/lora.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <set>

#include <torch/cuda.h>

#include "sdgen/checkpoint.h"
#include "sdgen/error.h"
#include "sdgen/lora_keys.h"
#include "sdgen/safetensors.h"
#include "sdgen/torch_checkpoint.h"
#include "sdgen/weights.h"

namespace fs = std::filesystem;

namespace sdgen {

const char* lora_target_name(LoraTarget target) {
  switch (target) {
    case LoraTarget::unet:
      return "unet";
    case LoraTarget::text_encoder:
      return "text_encoder";
    case LoraTarget::text_encoder_2:
      return "text_encoder_2";
  }
  return "?";
}

namespace {

bool begins(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
bool finishes(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

std::string to_underscored(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}

// The modules a LoRA can change, by the names files use for them.
struct ModuleTable {
  // underscored module name -> parameter name ("down_blocks_0_..._to_q" ->
  // "down_blocks.0....to_q.weight"), per target.
  std::map<LoraTarget, std::map<std::string, std::string>> underscored;
  std::map<LoraTarget, std::map<std::string, torch::Tensor>> parameters;
  const UNetConfig* unet_config = nullptr;

  explicit ModuleTable(const StableDiffusionModel& model) {
    unet_config = &model.unet->config();
    add(LoraTarget::unet, *model.unet);
    add(LoraTarget::text_encoder, *model.text_encoder);
    if (model.text_encoder_2) add(LoraTarget::text_encoder_2, *model.text_encoder_2);
  }

  void add(LoraTarget target, const torch::nn::Module& module) {
    for (const auto& p : module.named_parameters()) {
      if (!finishes(p.key(), ".weight") || p.value().dim() < 2) continue;
      const std::string name = p.key().substr(0, p.key().size() - 7);
      underscored[target][to_underscored(name)] = p.key();
      parameters[target][p.key()] = p.value();
    }
  }

  // The parameter a kohya UNet layer name (after "lora_unet_") names, in
  // diffusers block names or LDM ones (input_blocks / middle_block /
  // output_blocks, converted as single-file checkpoints are); "" if none.
  std::string unet_parameter(const std::string& rest) const {
    const auto& table = underscored.at(LoraTarget::unet);
    if (auto it = table.find(rest); it != table.end()) return it->second;
    // LDM: a block head (input_blocks_I_K, middle_block_K, output_blocks_I_K
    // or a top-level layer) and, below it, the diffusers sub-path
    // (transformer blocks are named alike) or a ResBlock part.
    static const std::pair<const char*, const char*> kTop[] = {
        {"time_embed_0", "time_embed.0"},         {"time_embed_2", "time_embed.2"},
        {"label_emb_0_0", "label_emb.0.0"},       {"label_emb_0_2", "label_emb.0.2"},
        {"input_blocks_0_0", "input_blocks.0.0"}, {"out_2", "out.2"}};
    for (const auto& [u, dotted] : kTop)
      if (rest == u) return convert(std::string(dotted) + ".weight");
    const auto ldm = split_ldm_layer_name(rest);
    if (!ldm) return "";
    const std::string& head = ldm->block;
    const std::string& tail = ldm->rest;
    // ResBlock parts and samplers keep LDM names below the block.
    static const std::pair<const char*, const char*> kParts[] = {
        {"in_layers_2", "in_layers.2"},
        {"out_layers_3", "out_layers.3"},
        {"emb_layers_1", "emb_layers.1"},
        {"skip_connection", "skip_connection"},
        {"op", "op"},
        {"conv", "conv"}};
    for (const auto& [u, dotted] : kParts) {
      if (tail != u) continue;
      const std::string p = convert(head + "." + dotted + ".weight");
      if (!p.empty()) return p;
    }
    // Attention blocks: the converted block prefix + the diffusers sub-path.
    const std::string probe = convert(head + ".x");
    if (probe.size() < 2 || !finishes(probe, ".x")) return "";
    const std::string prefix = to_underscored(probe.substr(0, probe.size() - 1));
    if (auto it = table.find(prefix + tail); it != table.end()) return it->second;
    return "";
  }

  std::string convert(const std::string& ldm) const {
    return ldm_unet_name_to_diffusers(ldm, *unet_config);
  }

  // A text encoder layer name below "text_model_" / "text_model." (kohya,
  // PEFT), or without that level.
  std::string text_parameter(LoraTarget target, const std::string& rest, bool dotted) const {
    auto t = underscored.find(target);
    if (t == underscored.end()) return "";
    std::string name = rest;
    for (const char* level : {"text_model_", "text_model."})
      if (begins(name, level)) name = name.substr(11);
    if (auto it = t->second.find(dotted ? to_underscored(name) : name); it != t->second.end())
      return it->second;
    return "";
  }
};

struct Resolved {
  LoraTarget target = LoraTarget::unet;
  std::string parameter;  // "" = no such module
  std::string format;
};

// Which module a layer name (the key without its suffix) means.
Resolved resolve(const ModuleTable& modules, const std::string& layer, bool sdxl) {
  Resolved r;
  std::string rest;
  auto take = [&](const char* prefix) {
    if (!begins(layer, prefix)) return false;
    rest = layer.substr(std::string(prefix).size());
    return true;
  };
  if (take("lora_unet_")) {
    r.format = "kohya";
    r.parameter = modules.unet_parameter(rest);
  } else if (take("lora_te1_") || (sdxl && take("lora_te_"))) {
    r.format = "kohya";
    r.target = LoraTarget::text_encoder;
    r.parameter = modules.text_parameter(r.target, rest, false);
  } else if (take("lora_te2_")) {
    r.format = "kohya";
    r.target = LoraTarget::text_encoder_2;
    r.parameter = modules.text_parameter(r.target, rest, false);
  } else if (take("lora_te_")) {
    r.format = "kohya";
    r.target = LoraTarget::text_encoder;
    r.parameter = modules.text_parameter(r.target, rest, false);
  } else {
    // diffusers / PEFT: dotted module names under the component's name.
    std::string name = layer;
    for (const char* p : {"base_model.model."})
      if (begins(name, p)) name = name.substr(std::string(p).size());
    r.format = "peft";
    if (begins(name, "unet.")) {
      const auto& table = modules.underscored.at(LoraTarget::unet);
      if (auto it = table.find(to_underscored(name.substr(5))); it != table.end())
        r.parameter = it->second;
    } else if (begins(name, "text_encoder_2.")) {
      r.target = LoraTarget::text_encoder_2;
      r.parameter = modules.text_parameter(r.target, name.substr(15), true);
    } else if (begins(name, "text_encoder.")) {
      r.target = LoraTarget::text_encoder;
      r.parameter = modules.text_parameter(r.target, name.substr(13), true);
    } else {
      r.format.clear();  // not a LoRA layer name sdgen knows
    }
  }
  return r;
}

void check_finite(const torch::Tensor& t, const std::string& path, const std::string& key) {
  if (t.numel() > 0 && !torch::isfinite(t.to(torch::kFloat32)).all().item<bool>())
    throw Error(path + ": tensor '" + key + "' holds NaN or Inf values");
}

}  // namespace

torch::Tensor LoraLayer::delta(c10::IntArrayRef shape, const torch::Device& device) const {
  const double scale = rank > 0 ? alpha / static_cast<double>(rank) : 1.0;
  auto f = [&device](const torch::Tensor& t) { return t.to(device, torch::kFloat32).flatten(1); };
  torch::Tensor product;
  if (loha) {
    product = torch::matmul(f(w1a), f(w1b)) * torch::matmul(f(w2a), f(w2b));
  } else {
    product = torch::matmul(f(up), f(down));
  }
  return (product * scale).reshape(shape);
}

LoraFile read_lora(const std::string& path, const StableDiffusionModel& model) {
  LoraFile out;
  out.path = path;
  out.name = fs::path(path).stem().string();
  if (is_pickle_file_name(path)) throw Error(pickle_refusal(path, "LoRA files"));
  const SafeTensorsFile file(path);
  const ModuleTable modules(model);
  const bool sdxl = model.is_sdxl();

  // Group the tensors by layer.
  std::map<std::string, std::map<std::string, std::string>> layers;  // layer -> suffix -> key
  for (const auto& name : file.names()) {
    std::string layer, suffix;
    if (split_lora_key(name, &layer, &suffix)) layers[layer][suffix] = name;
  }
  bool any_lora = false, te12 = false;
  for (const auto& [layer, parts] : layers) {
    if (begins(layer, "lora_te1_") || begins(layer, "lora_te2_")) te12 = true;
    for (const char* s : {".lora_down.weight", ".lora_A.weight", ".lora.down.weight", ".hada_w1_a",
                          ".lokr_w1", ".lokr_w1_a", ".diff"})
      if (parts.count(s)) any_lora = true;
  }
  if (!any_lora)
    throw Error(path + ": not a LoRA: no lora_down / lora_A / hada_w1_a tensors among its " +
                std::to_string(file.names().size()) + " tensors");
  out.family = te12 ? "SDXL" : "SD1.x/SD2.x";
  if (te12 && !sdxl)
    throw Error(path + ": an SDXL LoRA (lora_te1_/lora_te2_ keys) cannot be applied to this " +
                model.family + " model");

  for (const auto& [layer, parts] : layers) {
    auto has = [&parts](const char* s) { return parts.count(s) > 0; };
    auto tensor = [&](const char* s) {
      const std::string& key = parts.at(s);
      torch::Tensor t = file.tensor(key);
      check_finite(t, path, key);
      return t;
    };
    for (const char* unsupported : {".lokr_w1", ".lokr_w1_a"})
      if (has(unsupported))
        throw Error(path + ": layer '" + layer + "' is LoKr, which sdgen does not apply (LoRA, " +
                    "LoCon and LoHa are supported)");
    if (has(".dora_scale"))
      throw Error(path + ": layer '" + layer +
                  "' is DoRA (dora_scale), which sdgen does not apply");
    if (has(".lora_mid.weight") || has(".hada_t1"))
      throw Error(path + ": layer '" + layer +
                  "' is a Tucker-decomposed convolution (lora_mid / hada_t1), which sdgen does "
                  "not apply");
    if (has(".diff") && !has(".lora_down.weight"))
      throw Error(path + ": layer '" + layer +
                  "' is a full weight difference (diff), which "
                  "sdgen does not apply");
    LoraLayer l;
    l.key = layer;
    if (has(".hada_w1_a")) {
      for (const char* s : {".hada_w1_b", ".hada_w2_a", ".hada_w2_b"})
        if (!has(s)) throw Error(path + ": LoHa layer '" + layer + "' has no " + (s + 1));
      l.loha = true;
      l.w1a = tensor(".hada_w1_a");
      l.w1b = tensor(".hada_w1_b");
      l.w2a = tensor(".hada_w2_a");
      l.w2b = tensor(".hada_w2_b");
      l.rank = l.w1b.size(0);
    } else {
      const char* down_key = has(".lora_down.weight")   ? ".lora_down.weight"
                             : has(".lora_A.weight")    ? ".lora_A.weight"
                             : has(".lora.down.weight") ? ".lora.down.weight"
                                                        : nullptr;
      if (!down_key) continue;  // a stray alpha or bias without its layer
      const char* up_key = std::string(down_key) == ".lora_down.weight" ? ".lora_up.weight"
                           : std::string(down_key) == ".lora_A.weight"  ? ".lora_B.weight"
                                                                        : ".lora.up.weight";
      if (!has(up_key))
        throw Error(path + ": layer '" + layer + "' has " + (down_key + 1) + " but no " +
                    (up_key + 1));
      l.down = tensor(down_key);
      l.up = tensor(up_key);
      if (l.down.dim() < 2 || l.up.dim() < 2 || l.up.size(1) != l.down.size(0))
        throw Error(path + ": layer '" + layer + "': up " + shape_string(l.up.sizes()) +
                    " and down " + shape_string(l.down.sizes()) + " do not multiply");
      l.rank = l.down.size(0);
    }
    l.alpha = static_cast<double>(l.rank);
    if (has(".alpha")) {
      const torch::Tensor a = tensor(".alpha");
      if (a.numel() != 1)
        throw Error(path + ": tensor '" + parts.at(".alpha") + "' must hold one number");
      l.alpha = a.to(torch::kFloat64).item<double>();
    }
    const Resolved where = resolve(modules, layer, sdxl);
    if (where.format.empty() || where.parameter.empty()) {
      ++out.unmatched;
      continue;
    }
    if (out.format.empty()) out.format = where.format;
    l.target = where.target;
    l.parameter = where.parameter;
    const torch::Tensor& w = modules.parameters.at(l.target).at(l.parameter);
    const int64_t out_features = l.loha ? l.w1a.size(0) : l.up.size(0);
    const int64_t in_elements = l.loha ? l.w1b.numel() / l.rank : l.down.numel() / l.rank;
    if (out_features != w.size(0) || out_features * in_elements != w.numel())
      throw Error(
          path + ": layer '" + layer + "' (" +
          (l.loha ? "LoHa"
                  : "up " + shape_string(l.up.sizes()) + ", down " + shape_string(l.down.sizes())) +
          ") does not fit " + lora_target_name(l.target) + " " + l.parameter + " " +
          shape_string(w.sizes()) + "; is the LoRA for another model family?");
    out.conv = out.conv || w.dim() == 4;
    out.max_rank = std::max(out.max_rank, l.rank);
    if (l.target != LoraTarget::unet) ++out.te_layers;
    out.layers.push_back(std::move(l));
  }
  if (out.layers.empty())
    throw Error(path + ": none of its " + std::to_string(out.unmatched) +
                " LoRA layers names a layer of this " + model.family +
                " model; is it for another model family?");
  return out;
}

LoraSummary summarize_lora(const std::string& path) {
  const SafeTensorsFile file(path);
  LoraSummary s;
  std::set<std::string> seen;
  for (const auto& name : file.names()) {
    std::string layer, suffix;
    if (!split_lora_key(name, &layer, &suffix) || suffix == ".alpha") continue;
    if (!seen.insert(layer).second) continue;
    ++s.layers;
    const bool te = begins(layer, "lora_te") || begins(layer, "text_encoder");
    if (te)
      ++s.te_layers;
    else
      ++s.unet_layers;
    if (begins(layer, "lora_te1_") || begins(layer, "lora_te2_") ||
        begins(layer, "text_encoder_2."))
      s.family = "SDXL";
    if (begins(layer, "lora_")) s.format = "kohya";
    if (s.format.empty() && (suffix == ".lora_A.weight" || suffix == ".lora.down.weight"))
      s.format = "peft";
    if (suffix == ".hada_w1_a") s.loha = true;
    const auto info = file.tensors().at(name);
    if (suffix == ".lora_down.weight" || suffix == ".lora_A.weight" ||
        suffix == ".lora.down.weight") {
      if (!info.shape.empty()) s.max_rank = std::max<int64_t>(s.max_rank, info.shape[0]);
      if (info.shape.size() == 4 && (info.shape[2] > 1 || info.shape[3] > 1)) s.conv = true;
    }
  }
  if (s.layers == 0) throw Error(path + ": not a LoRA: no LoRA layer keys");
  if (s.family.empty()) s.family = "SD1.x/SD2.x (or an SDXL LoRA without text-encoder layers)";
  if (s.format.empty()) s.format = "LyCORIS";
  return s;
}

// ---- merging ---------------------------------------------------------------

LoraMerger::LoraMerger(StableDiffusionModel& model) : model_(model) {
  for (const auto target :
       {LoraTarget::unet, LoraTarget::text_encoder, LoraTarget::text_encoder_2}) {
    torch::nn::Module* module = nullptr;
    if (target == LoraTarget::unet)
      module = model_.unet.get();
    else if (target == LoraTarget::text_encoder)
      module = model_.text_encoder.get();
    else if (model_.text_encoder_2)
      module = model_.text_encoder_2.get();
    if (!module) continue;
    for (const auto& p : module->named_parameters())
      parameters_.emplace(std::string(lora_target_name(target)) + ":" + p.key(), p.value());
  }
}

LoraMerger::~LoraMerger() {
  try {
    restore();
  } catch (...) {  // destructors do not throw; the model is being dropped anyway
  }
}

torch::Tensor LoraMerger::parameter(const std::string& id) {
  const auto it = parameters_.find(id);
  if (it == parameters_.end()) {
    const auto colon = id.find(':');
    throw Error("LoRA: no parameter " + id.substr(colon + 1) + " in the model's " +
                id.substr(0, colon));
  }
  return it->second;
}

namespace {

// A copy of `w` that gives it back bit for bit, as small as that allows: a
// float32 weight loaded from an fp16 (or bf16) file is kept in that dtype.
torch::Tensor compact_copy(const torch::Tensor& w) {
  if (w.scalar_type() == torch::kFloat32) {
    for (const auto dtype : {torch::kFloat16, torch::kBFloat16}) {
      torch::Tensor small = w.to(dtype);
      if (torch::equal(small.to(torch::kFloat32), w)) return small;
    }
  }
  return w.clone();
}

}  // namespace

torch::Tensor LoraMerger::original(const std::string& id, const torch::Tensor& w) {
  auto it = originals_.find(id);
  if (it != originals_.end()) return it->second;
  // A CPU model keeps the mapped file tensor each parameter was converted
  // from: converting it again (the same copy_ as load_weights) gives W bit for
  // bit, and holds no memory between merges. Checked once against W, so a
  // file changed on disk since loading falls back to a copy.
  const auto colon = id.find(':');
  const auto comp = model_.weight_sources.find(id.substr(0, colon));
  if (comp != model_.weight_sources.end()) {
    const auto src = comp->second.find(id.substr(colon + 1));
    if (src != comp->second.end() && src->second.sizes() == w.sizes()) {
      prefault_mapped_pages(src->second);
      const bool same = torch::equal(src->second.to(w.scalar_type()), w);
      if (!model_.weights_as_stored) release_mapped_pages(src->second);  // else W's own pages
      if (same) {
        from_file_[id] = true;
        return originals_.emplace(id, src->second).first->second;
      }
    }
  }
  return originals_.emplace(id, compact_copy(w)).first->second;
}

int64_t LoraMerger::new_copy_bytes(const std::vector<Item>& loras) const {
  std::set<std::string> seen;
  int64_t bytes = 0;
  for (const auto& item : loras) {
    if (!item.file) continue;
    for (const auto& layer : item.file->layers) {
      const std::string component = lora_target_name(layer.target);
      const std::string id = component + ":" + layer.parameter;
      if (originals_.count(id) || !seen.insert(id).second) continue;
      const auto comp = model_.weight_sources.find(component);
      if (comp != model_.weight_sources.end() && comp->second.count(layer.parameter)) continue;
      const auto p = parameters_.find(id);
      if (p == parameters_.end()) continue;
      // At most the weight's own size (compact_copy may halve a float32 one).
      bytes += p->second.numel() * static_cast<int64_t>(p->second.element_size());
    }
  }
  return bytes;
}

void LoraMerger::put_back(const std::string& id) {
  const torch::Tensor& orig = originals_.at(id);
  if (model_.weights_as_stored) {
    // The stored weight itself again (the mapped file tensor: no copy).
    parameter(id).set_data(orig);
    return;
  }
  parameter(id).copy_(orig);
  if (from_file_.count(id)) release_mapped_pages(orig);
}

void LoraMerger::apply(const std::vector<Item>& loras) {
  torch::NoGradGuard no_grad;
  const auto t0 = std::chrono::steady_clock::now();
  // Which LoRA layers change each model layer, in order (first seen first).
  struct Part {
    const LoraLayer* layer;
    double weight;
  };
  std::vector<std::string> order;
  std::map<std::string, std::vector<Part>> parts;
  for (const auto& item : loras) {
    if (!item.file) continue;
    for (const auto& layer : item.file->layers) {
      const double weight = layer.target == LoraTarget::unet ? item.unet_weight : item.te_weight;
      if (weight == 0) continue;
      const std::string id = std::string(lora_target_name(layer.target)) + ":" + layer.parameter;
      auto& list = parts[id];
      if (list.empty()) order.push_back(id);
      list.push_back({&layer, weight});
    }
  }
  // Layers the previous set changed and this one does not: their originals.
  for (const auto& id : touched_)
    if (!parts.count(id)) put_back(id);
  touched_.clear();
  // One layer at a time (the float32 sums of a whole SDXL LoRA would not fit
  // beside the model): kohya merge_to / diffusers fuse_lora, W + scale * up @
  // down in float32, written back in the model's dtype.
  for (const auto& id : order) {
    torch::Tensor w = parameter(id);
    const torch::Tensor& orig = original(id, w);
    torch::Tensor sum;
    for (const auto& part : parts[id]) {
      torch::Tensor d = part.layer->delta(w.sizes(), w.device()) * part.weight;
      sum = sum.defined() ? sum.add_(d) : d;
    }
    // W in float32: the original converted to the model's dtype first (a
    // bf16 model loaded from an fp16 file holds bf16-rounded values).
    const torch::Tensor merged = orig.to(w.scalar_type()).to(torch::kFloat32) + sum;
    if (model_.weights_as_stored) {
      // Weights kept as stored may be read-only views of the file mapping:
      // the merged weight replaces the tensor, in the stored dtype so that
      // memory stays as loaded (rounded once to fp16/bf16, as diffusers'
      // fuse_lora on a half-precision model; fp32 weights merge exactly).
      w.set_data(merged.to(w.scalar_type()));
    } else {
      w.copy_(merged);
      if (from_file_.count(id)) release_mapped_pages(orig);
    }
    touched_.push_back(id);
  }
  if (model_.device.is_cuda()) torch::cuda::synchronize(model_.device.index());
  last_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace sdgen
