#include "sdgen/weights.h"

#include <set>
#include <sstream>

#include "sdgen/error.h"

namespace sdgen {

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

TensorMap tensors_with_prefix(const SafeTensorsFile& file, const std::string& prefix) {
  TensorMap out;
  for (const auto& kv : file.tensors())
    if (kv.first.compare(0, prefix.size(), prefix) == 0)
      out.emplace(kv.first.substr(prefix.size()), file.tensor(kv.first));
  return out;
}

void load_weights(torch::nn::Module& module, const TensorMap& weights, const std::string& what) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> missing, mismatched;
  std::set<std::string> used;
  for (auto& param : module.named_parameters(/*recurse=*/true)) {
    auto it = weights.find(param.key());
    if (it == weights.end()) {
      missing.push_back(param.key());
      continue;
    }
    used.insert(param.key());
    const auto& src = it->second;
    if (src.sizes() != param.value().sizes()) {
      mismatched.push_back(param.key() + " (expected " + shape_string(param.value().sizes()) +
                           ", found " + shape_string(src.sizes()) + ")");
      continue;
    }
    if (mismatched.empty() && missing.empty()) param.value().copy_(src);
  }
  std::vector<std::string> unexpected;
  for (const auto& kv : weights)
    if (!used.count(kv.first)) unexpected.push_back(kv.first);
  if (missing.empty() && mismatched.empty() && unexpected.empty()) return;

  // One line, but complete enough to act on: the first few keys of each kind.
  std::ostringstream msg;
  msg << what << ": weights do not match the model architecture:";
  auto list = [&](const char* label, const std::vector<std::string>& keys) {
    if (keys.empty()) return;
    msg << " " << keys.size() << " " << label << " (";
    for (size_t i = 0; i < keys.size() && i < 5; ++i) msg << (i ? ", " : "") << keys[i];
    if (keys.size() > 5) msg << ", ...";
    msg << ");";
  };
  list("wrong shape", mismatched);
  list("missing", missing);
  list("unexpected", unexpected);
  std::string text = msg.str();
  text.pop_back();
  throw Error(text);
}

}  // namespace sdgen
