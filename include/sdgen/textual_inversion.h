#pragma once

// Textual-inversion embeddings as A1111 reads .safetensors ones
// (modules/textual_inversion/textual_inversion.py, load_from_file): a file
// holding one tensor [n_vectors, hidden] under any key ("emb_params",
// "string_to_param.*", ...), or SDXL's "clip_l" + "clip_g" pair. The file
// name without extension is the word that calls it in a prompt.

#include <string>
#include <vector>

#include <torch/torch.h>

#include "sdgen/model.h"

namespace sdgen {

struct TextualInversion {
  std::string name;  // the file name without extension
  std::string path;
  torch::Tensor vectors;    // [n, hidden] for the (first) text encoder, float32 on the CPU
  torch::Tensor vectors_2;  // SDXL: [n, hidden_2] for text_encoder_2 ("clip_g"), else undefined
  int count() const { return static_cast<int>(vectors.size(0)); }
};

// Reads an embedding for `model`. Throws Error naming the file: a pickle
// (with how to convert it), not one tensor / not a clip_l + clip_g pair, a
// width that does not fit the model's text encoder(s), NaN/Inf values.
TextualInversion read_textual_inversion(const std::string& path, const StableDiffusionModel& model);

}  // namespace sdgen
