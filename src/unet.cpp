#include "sdgen/unet.h"
#include "sdgen/layers.h"

#include <string>

#include "nn/embeddings.h"
#include "nn/unet_blocks.h"
#include "sdgen/error.h"
#include "sdgen/weights.h"

namespace sdgen {

namespace {

// diffusers allows these per-block fields as one value for every block.
std::vector<int> per_block(const std::vector<int>& v, size_t blocks, const char* key) {
  if (v.size() == 1) return std::vector<int>(blocks, v[0]);
  if (v.size() != blocks) {
    throw Error(std::string("UNet config: '") + key + "' has " + std::to_string(v.size()) +
                " entries, expected 1 or " + std::to_string(blocks));
  }
  return v;
}

void check_act_fn(const std::string& act_fn) {
  if (act_fn != "silu" && act_fn != "swish") {
    throw Error("UNet config: unsupported act_fn '" + act_fn + "' (expected silu)");
  }
}

}  // namespace

// diffusers UNet2DConditionModel.__init__, restricted to what SD1.x / SD2.x /
// SDXL use (positional time embedding, no class embedding, the "text_time"
// addition embedding, default resnets).
UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNetConfig& config) : config_(config) {
  const auto& channels = config.block_out_channels;
  const size_t blocks = channels.size();
  if (blocks == 0 || config.down_block_types.size() != blocks ||
      config.up_block_types.size() != blocks) {
    throw Error("UNet config: block_out_channels (" + std::to_string(blocks) +
                "), down_block_types (" + std::to_string(config.down_block_types.size()) +
                ") and up_block_types (" + std::to_string(config.up_block_types.size()) +
                ") must have the same non-zero length");
  }
  check_act_fn(config.act_fn);
  if (config.mid_block_type != "UNetMidBlock2DCrossAttn") {
    throw Error("UNet config: unsupported mid_block_type '" + config.mid_block_type +
                "' (expected UNetMidBlock2DCrossAttn)");
  }
  const auto layers_per_transformer =
      per_block(config.transformer_layers_per_block, blocks, "transformer_layers_per_block");
  // Up block i mirrors down block blocks-1-i; its transformer depth is
  // reverse_transformer_layers_per_block[i] when given.
  std::vector<int> up_layers_per_transformer(layers_per_transformer.rbegin(),
                                             layers_per_transformer.rend());
  if (!config.reverse_transformer_layers_per_block.empty())
    up_layers_per_transformer = per_block(config.reverse_transformer_layers_per_block, blocks,
                                          "reverse_transformer_layers_per_block");
  std::vector<int> heads(blocks);
  for (size_t i = 0; i < blocks; ++i) heads[i] = config.heads(i);

  const int64_t time_dim = channels[0] * 4;
  auto attn_settings = [&](size_t block) {
    nn::CrossAttnSettings s;
    s.heads = heads[block];
    s.context_dim = config.cross_attention_dim;
    s.transformer_layers = layers_per_transformer[block];
    s.use_linear_projection = config.use_linear_projection;
    s.upcast_attention = config.upcast_attention;
    if (s.heads <= 0 || channels[block] % s.heads != 0) {
      throw Error("UNet config: block " + std::to_string(block) + " has " +
                  std::to_string(channels[block]) + " channels, not divisible by " +
                  std::to_string(s.heads) + " attention heads");
    }
    return s;
  };

  conv_in_ = register_module("conv_in", nn::Conv2d(config.in_channels, channels[0], 3, 1, 1));
  // time_proj (get_timestep_embedding) has no parameters.
  time_embedding_ = register_module(
      "time_embedding", std::make_shared<nn::TimestepEmbeddingImpl>(channels[0], time_dim));
  if (config.addition_embed_type == "text_time") {
    if (config.addition_time_embed_dim <= 0 || config.projection_class_embeddings_input_dim <= 0)
      throw Error(
          "UNet config: addition_embed_type \"text_time\" needs positive "
          "addition_time_embed_dim and projection_class_embeddings_input_dim");
    // add_time_proj (Timesteps) has no parameters either.
    add_embedding_ = register_module("add_embedding",
                                     std::make_shared<nn::TimestepEmbeddingImpl>(
                                         config.projection_class_embeddings_input_dim, time_dim));
  } else if (!config.addition_embed_type.empty()) {
    throw Error("UNet config: unsupported addition_embed_type '" + config.addition_embed_type +
                "' (expected text_time or none)");
  }

  auto down_list = register_module("down_blocks", torch::nn::ModuleList());
  int64_t output_channel = channels[0];
  for (size_t i = 0; i < blocks; ++i) {
    const auto& type = config.down_block_types[i];
    if (type != "CrossAttnDownBlock2D" && type != "DownBlock2D") {
      throw Error("UNet config: unsupported down block type '" + type + "' (block " +
                  std::to_string(i) + ")");
    }
    nn::UNetBlockOptions o;
    o.in_channels = output_channel;
    output_channel = channels[i];
    o.out_channels = output_channel;
    o.temb_channels = time_dim;
    o.num_layers = config.layers_per_block;
    o.groups = config.norm_num_groups;
    o.eps = config.norm_eps;
    o.cross_attention = type == "CrossAttnDownBlock2D";
    o.add_sampler = i + 1 < blocks;
    o.downsample_padding = config.downsample_padding;
    if (o.cross_attention) o.attn = attn_settings(i);
    down_blocks_.push_back(std::make_shared<nn::UNetDownBlockImpl>(o));
    down_list->push_back(down_blocks_.back());
  }

  mid_block_ = register_module(
      "mid_block", std::make_shared<nn::UNetMidBlockCrossAttnImpl>(
                       channels.back(), time_dim, config.norm_num_groups, config.norm_eps,
                       config.mid_block_scale_factor, attn_settings(blocks - 1)));

  // Up path: blocks mirrored (diffusers' reversed_* lists).
  auto up_list = register_module("up_blocks", torch::nn::ModuleList());
  output_channel = channels.back();
  for (size_t i = 0; i < blocks; ++i) {
    const size_t mirrored = blocks - 1 - i;
    const auto& type = config.up_block_types[i];
    if (type != "CrossAttnUpBlock2D" && type != "UpBlock2D") {
      throw Error("UNet config: unsupported up block type '" + type + "' (block " +
                  std::to_string(i) + ")");
    }
    nn::UNetBlockOptions o;
    o.prev_output_channels = output_channel;
    output_channel = channels[mirrored];
    o.out_channels = output_channel;
    o.in_channels = channels[mirrored == 0 ? 0 : mirrored - 1];
    o.temb_channels = time_dim;
    o.num_layers = config.layers_per_block + 1;
    o.groups = config.norm_num_groups;
    o.eps = config.norm_eps;
    o.cross_attention = type == "CrossAttnUpBlock2D";
    o.add_sampler = i + 1 < blocks;
    if (o.cross_attention) {
      o.attn = attn_settings(mirrored);
      o.attn.transformer_layers = up_layers_per_transformer[i];
    }
    up_blocks_.push_back(std::make_shared<nn::UNetUpBlockImpl>(o));
    up_list->push_back(up_blocks_.back());
  }

  conv_norm_out_ = register_module(
      "conv_norm_out", nn::GroupNorm(config.norm_num_groups, channels[0], config.norm_eps));
  conv_out_ = register_module("conv_out", nn::Conv2d(channels[0], config.out_channels, 3, 1, 1));
}

int UNet2DConditionModelImpl::downsample_factor() const {
  return 1 << (config_.block_out_channels.size() - 1);
}

// diffusers UNet2DConditionModel.forward: time embedding, conv_in, down path
// collecting skips, mid block, up path consuming them, norm + SiLU + conv_out.
torch::Tensor UNet2DConditionModelImpl::addition_embedding(const torch::Tensor& text_embeds,
                                                           const torch::Tensor& time_ids) {
  if (!add_embedding_) throw Error("UNet: this model has no addition embedding (not SDXL)");
  if (text_embeds.dim() != 2 || time_ids.dim() != 2 || text_embeds.size(0) != time_ids.size(0))
    throw Error("UNet: text_embeds must be [B, P] and time_ids [B, N], got " +
                shape_string(text_embeds.sizes()) + " and " + shape_string(time_ids.sizes()));
  const int64_t inputs = text_embeds.size(1) + time_ids.size(1) * config_.addition_time_embed_dim;
  if (inputs != config_.projection_class_embeddings_input_dim)
    throw Error("UNet: text_embeds " + shape_string(text_embeds.sizes()) + " and time_ids " +
                shape_string(time_ids.sizes()) + " give " + std::to_string(inputs) +
                " addition inputs, the model takes " +
                std::to_string(config_.projection_class_embeddings_input_dim));
  const auto dtype = conv_in_->dtype();  // the compute dtype (weights may be stored narrower)
  const auto device = conv_in_->weight.device();
  auto time_embeds =
      nn::timestep_embedding(time_ids.to(device).flatten(), config_.addition_time_embed_dim,
                             config_.flip_sin_to_cos, config_.freq_shift)
          .reshape({text_embeds.size(0), -1});
  auto add_embeds = torch::cat({text_embeds.to(device, torch::kFloat32), time_embeds}, -1);
  return add_embedding_->forward(add_embeds.to(dtype));
}

torch::Tensor UNet2DConditionModelImpl::forward(const torch::Tensor& sample,
                                                const torch::Tensor& timesteps,
                                                const torch::Tensor& encoder_hidden_states,
                                                const torch::Tensor& added_embedding) {
  if (sample.dim() != 4 || sample.size(1) != config_.in_channels) {
    throw Error("UNet: sample must be [B, " + std::to_string(config_.in_channels) +
                ", H, W], got " + shape_string(sample.sizes()));
  }
  const int64_t batch = sample.size(0);
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != batch ||
      encoder_hidden_states.size(2) != config_.cross_attention_dim) {
    throw Error("UNet: encoder_hidden_states must be [" + std::to_string(batch) + ", L, " +
                std::to_string(config_.cross_attention_dim) + "], got " +
                shape_string(encoder_hidden_states.sizes()));
  }
  auto t = timesteps.to(sample.device()).reshape({-1});
  if (t.size(0) == 1) {
    t = t.expand({batch});
  } else if (t.size(0) != batch) {
    throw Error("UNet: timesteps must have 1 or " + std::to_string(batch) + " entries, got " +
                shape_string(timesteps.sizes()));
  }
  make_weights_resident(*this);  // weights kept as stored: this model's pages in
  const auto dtype = sample.scalar_type();
  // get_timestep_embedding always computes in float32; cast to the model dtype
  // as diffusers' get_time_embed does.
  auto t_emb = nn::timestep_embedding(t, config_.block_out_channels[0], config_.flip_sin_to_cos,
                                      config_.freq_shift)
                   .to(dtype);
  auto emb = time_embedding_->forward(t_emb);
  if (add_embedding_) {
    if (!added_embedding.defined() || added_embedding.dim() != 2 ||
        added_embedding.size(1) != emb.size(1) ||
        (added_embedding.size(0) != batch && added_embedding.size(0) != 1))
      throw Error("UNet: this model (SDXL) needs the addition embedding [" + std::to_string(batch) +
                  ", " + std::to_string(emb.size(1)) + "], got " +
                  (added_embedding.defined() ? shape_string(added_embedding.sizes())
                                             : std::string("none")));
    emb = emb + added_embedding.to(emb.scalar_type());
  } else if (added_embedding.defined()) {
    throw Error("UNet: an addition embedding was given to a model without one");
  }
  auto context = encoder_hidden_states.to(dtype);

  auto x = conv_in_(sample);
  std::vector<torch::Tensor> skips{x};
  for (auto& block : down_blocks_) x = block->forward(x, emb, context, skips);
  x = mid_block_->forward(x, emb, context);
  for (size_t i = 0; i < up_blocks_.size(); ++i) {
    auto& block = up_blocks_[i];
    // Upsample to the size of the skip the next block consumes first, so that
    // sizes that are not multiples of downsample_factor() round-trip
    // (diffusers' forward_upsample_size / upsample_size).
    std::vector<int64_t> upsample_size;
    const auto n = static_cast<size_t>(block->num_layers());
    if (i + 1 < up_blocks_.size() && skips.size() > n) {
      const auto& next = skips[skips.size() - n - 1];
      upsample_size = {next.size(2), next.size(3)};
    }
    x = block->forward(x, emb, context, skips, upsample_size);
  }
  x = conv_norm_out_->forward_silu(x);
  return conv_out_(x);
}

}  // namespace sdgen
