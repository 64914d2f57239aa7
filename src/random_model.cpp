#include "sdgen/random_model.h"

#include <cmath>

#include "sdgen/config.h"
#include "sdgen/error.h"
#include "sdgen/safetensors.h"

namespace sdgen {

torch::Tensor random_weight(const std::string& name, const std::vector<int64_t>& shape,
                            torch::ScalarType dtype) {
  const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  const bool is_norm = name.find("norm") != std::string::npos ||
                       name.find("ln_") != std::string::npos ||
                       name.find("layer_norm") != std::string::npos;
  if (is_bias) return torch::zeros(shape, dtype);
  if (shape.size() <= 1) return is_norm ? torch::ones(shape, dtype) : torch::zeros(shape, dtype);
  int64_t fan_in = 1;
  for (size_t i = 1; i < shape.size(); ++i) fan_in *= shape[i];
  const bool embedding = name.find("embedding") != std::string::npos;
  const double std = embedding ? 0.02 : 1.0 / std::sqrt(static_cast<double>(fan_in));
  return (torch::randn(shape) * std).to(dtype);
}

void randomize_parameters(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters())
    p.value().set_data(
        random_weight(p.key(), p.value().sizes().vec(), torch::kFloat32).to(p.value().device()));
}

RandomCheckpointInfo write_random_checkpoint(const std::string& manifest_path,
                                             const std::string& key, const std::string& out,
                                             const std::string& dtype_name, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  const auto manifest = read_json_file(manifest_path);
  if (!manifest.contains(key) || !manifest[key].is_object())
    throw Error(manifest_path + ": no entry '" + key + "'");
  torch::ScalarType dtype = torch::kFloat16;
  if (dtype_name == "fp32")
    dtype = torch::kFloat32;
  else if (dtype_name == "bf16")
    dtype = torch::kBFloat16;
  else if (dtype_name != "fp16")
    throw Error("checkpoint dtype must be fp16, bf16 or fp32, got '" + dtype_name + "'");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  RandomCheckpointInfo info;
  for (auto it = manifest[key].begin(); it != manifest[key].end(); ++it) {
    const auto shape = it.value().get<std::vector<int64_t>>();
    tensors.emplace_back(it.key(), random_weight(it.key(), shape, dtype));
    info.parameters += tensors.back().second.numel();
  }
  info.tensors = tensors.size();
  write_safetensors(out, tensors, {{"format", "pt"}, {"sdgen", "random weights from " + key}});
  return info;
}

}  // namespace sdgen
