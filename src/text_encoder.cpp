#include "sdgen/text_encoder.h"
#include "sdgen/layers.h"

#include <algorithm>
#include <string>
#include <vector>

#include "nn/attention.h"
#include "sdgen/error.h"
#include "sdgen/weights.h"

namespace sdgen {

// Outside the anonymous namespace: CLIPMLPImpl, which the header's
// CLIPEncoderImpl reaches, has a field of this type.
enum class Activation { QuickGELU, GELU, GELUTanh };

namespace {

Activation activation_from_name(const std::string& name) {
  if (name == "quick_gelu") return Activation::QuickGELU;
  if (name == "gelu") return Activation::GELU;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::GELUTanh;
  throw Error("CLIP text config: unsupported hidden_act \"" + name +
              "\" (expected quick_gelu, gelu, gelu_new or gelu_pytorch_tanh)");
}

// transformers' ACT2FN entries used by CLIP configs.
torch::Tensor activate(const torch::Tensor& x, Activation act) {
  switch (act) {
    case Activation::QuickGELU:  // QuickGELUActivation: x * sigmoid(1.702 x)
      return x * torch::sigmoid(1.702 * x);
    case Activation::GELU:  // exact (erf) GELU, used by OpenCLIP ViT-H (SD2)
      return torch::gelu(x);
    case Activation::GELUTanh:
      return torch::gelu(x, "tanh");
  }
  return x;
}

nn::LayerNorm layer_norm(const CLIPTextConfig& config) {
  return nn::LayerNorm(config.hidden_size, config.layer_norm_eps);
}

}  // namespace

// transformers CLIPTextEmbeddings: token embedding + learned absolute position
// embedding (the position_ids buffer is not a parameter and is not stored).
struct CLIPTextEmbeddingsImpl : torch::nn::Module {
  explicit CLIPTextEmbeddingsImpl(const CLIPTextConfig& config) {
    token_embedding =
        register_module("token_embedding", nn::Embedding(config.vocab_size, config.hidden_size));
    position_embedding = register_module(
        "position_embedding", nn::Embedding(config.max_position_embeddings, config.hidden_size));
  }

  torch::Tensor forward(const torch::Tensor& input_ids,
                        const std::vector<TokenEmbeddingOverride>& overrides) {
    const int64_t length = input_ids.size(1);
    torch::Tensor tokens = token_embedding(input_ids);
    for (const auto& o : overrides) {
      if (o.row < 0 || o.row >= tokens.size(0) || o.position < 0 || o.position >= length)
        throw Error("CLIP text model: embedding override at row " + std::to_string(o.row) +
                    ", position " + std::to_string(o.position) + " is outside the batch");
      if (o.vectors.dim() != 2 || o.vectors.size(1) != tokens.size(2))
        throw Error("CLIP text model: embedding vectors " + shape_string(o.vectors.sizes()) +
                    " do not match the hidden size " + std::to_string(tokens.size(2)));
      const int64_t n = std::min(o.vectors.size(0), length - o.position);
      tokens[o.row].narrow(0, o.position, n).copy_(o.vectors.narrow(0, 0, n));
    }
    return tokens + position_embedding->weight.narrow(0, 0, length).to(tokens.scalar_type());
  }

  nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};

// transformers CLIPAttention (multi-head self-attention; the causal mask makes
// every token attend to itself and the tokens before it).
struct CLIPAttentionImpl : torch::nn::Module {
  explicit CLIPAttentionImpl(const CLIPTextConfig& config) : heads(config.num_attention_heads) {
    const int64_t c = config.hidden_size;
    if (heads <= 0 || c % heads != 0)
      throw Error("CLIP text config: hidden_size " + std::to_string(c) +
                  " is not divisible by num_attention_heads " + std::to_string(heads));
    q_proj = register_module("q_proj", nn::Linear(c, c));
    k_proj = register_module("k_proj", nn::Linear(c, c));
    v_proj = register_module("v_proj", nn::Linear(c, c));
    out_proj = register_module("out_proj", nn::Linear(c, c));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    auto q = nn::split_heads(q_proj(x), heads);
    auto k = nn::split_heads(k_proj(x), heads);
    auto v = nn::split_heads(v_proj(x), heads);
    return out_proj(nn::merge_heads(nn::attention(q, k, v, /*causal=*/true)));
  }

  int64_t heads;
  nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(CLIPAttention);

// transformers CLIPMLP: fc1 -> activation -> fc2.
struct CLIPMLPImpl : torch::nn::Module {
  explicit CLIPMLPImpl(const CLIPTextConfig& config)
      : act(activation_from_name(config.hidden_act)) {
    fc1 = register_module("fc1", nn::Linear(config.hidden_size, config.intermediate_size));
    fc2 = register_module("fc2", nn::Linear(config.intermediate_size, config.hidden_size));
  }

  torch::Tensor forward(const torch::Tensor& x) { return fc2(activate(fc1(x), act)); }

  Activation act;
  nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(CLIPMLP);

// transformers CLIPEncoderLayer: pre-LayerNorm residual blocks.
struct CLIPEncoderLayerImpl : torch::nn::Module {
  explicit CLIPEncoderLayerImpl(const CLIPTextConfig& config) {
    self_attn = register_module("self_attn", CLIPAttention(config));
    layer_norm1 = register_module("layer_norm1", layer_norm(config));
    mlp = register_module("mlp", CLIPMLP(config));
    layer_norm2 = register_module("layer_norm2", layer_norm(config));
  }

  torch::Tensor forward(torch::Tensor x) {
    x = x + self_attn(layer_norm1(x));
    return x + mlp(layer_norm2(x));
  }

  CLIPAttention self_attn{nullptr};
  nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  CLIPMLP mlp{nullptr};
};

// transformers CLIPEncoder: the stack "layers.N".
struct CLIPEncoderImpl : torch::nn::Module {
  explicit CLIPEncoderImpl(const CLIPTextConfig& config) {
    auto list = register_module("layers", torch::nn::ModuleList());
    for (int i = 0; i < config.num_hidden_layers; ++i) {
      layers.push_back(std::make_shared<CLIPEncoderLayerImpl>(config));
      list->push_back(layers.back());
    }
  }

  std::vector<std::shared_ptr<CLIPEncoderLayerImpl>> layers;
};

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& config) : config_(config) {
  if (config.hidden_size <= 0 || config.num_hidden_layers <= 0 || config.vocab_size <= 0 ||
      config.max_position_embeddings <= 0)
    throw Error(
        "CLIP text config: hidden_size, num_hidden_layers, vocab_size and "
        "max_position_embeddings must be positive");
  embeddings_ = register_module("embeddings", std::make_shared<CLIPTextEmbeddingsImpl>(config));
  encoder_ = register_module("encoder", std::make_shared<CLIPEncoderImpl>(config));
  final_layer_norm_ = register_module("final_layer_norm", layer_norm(config));
  // transformers CLIPTextModelWithProjection: Linear(hidden, projection_dim, bias=False).
  if (config.with_projection) {
    if (config.projection_dim <= 0)
      throw Error("CLIP text config: projection_dim must be positive");
    text_projection_ = register_module(
        "text_projection", nn::Linear(config.hidden_size, config.projection_dim, /*bias=*/false));
  }
}

// transformers CLIPTextTransformer.forward; clip_skip as in diffusers'
// StableDiffusionPipeline.encode_prompt (hidden_states[-(clip_skip)] then
// final_layer_norm, in A1111 numbering where 1 is the last layer).
CLIPTextOutput CLIPTextModelImpl::forward(const torch::Tensor& input_ids, int clip_skip,
                                          HiddenNorm norm,
                                          const std::vector<TokenEmbeddingOverride>& overrides) {
  const int layers = config_.num_hidden_layers;
  if (input_ids.dim() != 2)
    throw Error("CLIP text model: input_ids must be [batch, length], found " +
                std::to_string(input_ids.dim()) + " dimensions");
  if (input_ids.size(1) < 1 || input_ids.size(1) > config_.max_position_embeddings)
    throw Error("CLIP text model: sequence length " + std::to_string(input_ids.size(1)) +
                " outside [1, max_position_embeddings=" +
                std::to_string(config_.max_position_embeddings) + "]");
  if (clip_skip < 1 || clip_skip > layers)
    throw Error("CLIP text model: clip_skip " + std::to_string(clip_skip) + " outside [1, " +
                std::to_string(layers) + "] (1 = last layer)");

  make_weights_resident(*this);  // weights kept as stored: this model's pages in
  const auto device = final_layer_norm_->weight.device();
  const torch::Tensor ids = input_ids.to(device, torch::kLong);
  torch::Tensor x = embeddings_->forward(ids, overrides);
  // hidden_states[i] is the output of layer i (hidden_states[0] = embeddings);
  // clip_skip k selects hidden_states[layers + 1 - k].
  const int chosen = layers + 1 - clip_skip;
  torch::Tensor chosen_state;
  for (int i = 0; i < layers; ++i) {
    x = encoder_->layers[static_cast<size_t>(i)]->forward(x);
    if (i + 1 == chosen) chosen_state = x;
  }
  const torch::Tensor last = final_layer_norm_(x);

  // Pooled output: the state at the first eos token (transformers uses argmax
  // of the ids instead when eos_token_id == 2, for old configs).
  torch::Tensor eos_index = config_.eos_token_id == 2
                                ? ids.argmax(-1)
                                : (ids == config_.eos_token_id).to(torch::kInt).argmax(-1);
  const torch::Tensor batch = torch::arange(ids.size(0), ids.options());
  torch::Tensor pooled = last.index({batch, eos_index});

  CLIPTextOutput out;
  if (norm == HiddenNorm::none)
    out.hidden = chosen_state;
  else
    out.hidden = clip_skip == 1 ? last : final_layer_norm_(chosen_state);
  out.pooled = pooled;
  if (text_projection_) out.text_embeds = text_projection_(pooled);
  return out;
}

}  // namespace sdgen
