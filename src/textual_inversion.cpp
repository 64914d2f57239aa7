#include "sdgen/textual_inversion.h"

#include <filesystem>

#include "sdgen/error.h"
#include "sdgen/safetensors.h"
#include "sdgen/torch_checkpoint.h"
#include "sdgen/weights.h"

namespace fs = std::filesystem;

namespace sdgen {

namespace {

torch::Tensor as_vectors(const torch::Tensor& t, const std::string& path, const std::string& key,
                         int64_t hidden) {
  torch::Tensor v = t.dim() == 1 ? t.unsqueeze(0) : t;
  if (v.dim() != 2 || v.size(0) < 1 || v.size(1) != hidden)
    throw Error(path + ": tensor '" + key + "' " + shape_string(t.sizes()) + " is not [vectors, " +
                std::to_string(hidden) + "] for this model's text encoder");
  v = v.to(torch::kFloat32).contiguous().clone();
  if (!torch::isfinite(v).all().item<bool>())
    throw Error(path + ": tensor '" + key + "' holds NaN or Inf values");
  return v;
}

}  // namespace

TextualInversion read_textual_inversion(const std::string& path,
                                        const StableDiffusionModel& model) {
  if (is_pickle_file_name(path)) throw Error(pickle_refusal(path, "embeddings"));
  const SafeTensorsFile file(path);
  TextualInversion out;
  out.name = fs::path(path).stem().string();
  out.path = path;
  const int64_t hidden = model.text_encoder->config().hidden_size;
  const auto names = file.names();
  if (file.contains("clip_l") && file.contains("clip_g")) {
    // SDXL (A1111: data["clip_l"] for the first encoder, "clip_g" for the second).
    if (!model.text_encoder_2)
      throw Error(path + ": an SDXL embedding (clip_l + clip_g) does not fit this " + model.family +
                  " model");
    out.vectors = as_vectors(file.tensor("clip_l"), path, "clip_l", hidden);
    out.vectors_2 = as_vectors(file.tensor("clip_g"), path, "clip_g",
                               model.text_encoder_2->config().hidden_size);
    if (out.vectors.size(0) != out.vectors_2.size(0))
      throw Error(path + ": clip_l has " + std::to_string(out.vectors.size(0)) +
                  " vectors and clip_g " + std::to_string(out.vectors_2.size(0)));
    return out;
  }
  if (names.size() != 1)
    throw Error(path + ": not an embedding: it holds " + std::to_string(names.size()) +
                " tensors, not one (or SDXL's clip_l + clip_g)");
  if (model.text_encoder_2)
    throw Error(path +
                ": a one-tensor embedding (SD1/SD2) does not fit this SDXL model, which "
                "needs clip_l + clip_g");
  out.vectors = as_vectors(file.tensor(names[0]), path, names[0], hidden);
  return out;
}

}  // namespace sdgen
