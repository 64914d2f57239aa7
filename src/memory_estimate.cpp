#include "sdgen/memory_estimate.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <torch/version.h>

#include "sdgen/checkpoint.h"
#include "sdgen/error.h"
#include "sdgen/model_files.h"
#include "sdgen/safetensors.h"
#include "sdgen/weights.h"

namespace sdgen {

// ---- the model's files ------------------------------------------------------

namespace {

int64_t element_count(const TensorInfo& info) {
  int64_t n = 1;
  for (auto d : info.shape) n *= static_cast<int64_t>(d);
  return n;
}

int64_t stored_bytes(const TensorInfo& info) {
  return element_count(info) * static_cast<int64_t>(dtype_size(info.dtype));
}

// Elements of the file's tensors; their stored bytes are added to `bytes`.
int64_t file_elements(const std::string& path, int64_t& bytes) {
  const SafeTensorsFile file(path);
  int64_t n = 0;
  for (const auto& [name, info] : file.tensors()) {
    n += element_count(info);
    bytes += stored_bytes(info);
  }
  return n;
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

ModelFootprint inspect_model_files(const LoadOptions& options) {
  ModelFootprint out;
  const ModelFiles files = resolve_model_files(options);
  if (files.layout == ModelLayout::diffusers) {
    out.unet = UNetConfig::from_json(read_json_file(files.unet.config));
    out.vae = VAEConfig::from_json(read_json_file(files.vae.config));
    out.text_encoder = CLIPTextConfig::from_json(read_json_file(files.text_encoder.config));
    out.unet_parameters = file_elements(files.unet.weights, out.stored_weight_bytes);
    out.vae_parameters = file_elements(files.vae.weights, out.stored_weight_bytes);
    out.text_encoder_parameters =
        file_elements(files.text_encoder.weights, out.stored_weight_bytes);
    if (out.unet.addition_embed_type == "text_time") {  // SDXL
      out.text_encoder_2 = CLIPTextConfig::from_json(read_json_file(files.text_encoder_2.config));
      out.text_encoder_parameters +=
          file_elements(files.text_encoder_2.weights, out.stored_weight_bytes);
    }
    return out;
  }
  const SafeTensorsFile file(files.model_path);
  const TensorMap all = tensors_with_prefix(file, "");  // views of the mapping, nothing read
  const ModelFamily family = detect_family(all);
  if (!files.unet.config.empty()) {
    out.unet = UNetConfig::from_json(read_json_file(files.unet.config));
    out.vae = VAEConfig::from_json(read_json_file(files.vae.config));
    out.text_encoder = CLIPTextConfig::from_json(read_json_file(files.text_encoder.config));
    if (family == ModelFamily::SDXL)
      out.text_encoder_2 = CLIPTextConfig::from_json(read_json_file(files.text_encoder_2.config));
  } else {
    out.unet = infer_unet_config(all, family);
    out.vae = infer_vae_config(all, family);
    out.text_encoder = infer_clip_config(all, family);
    if (family == ModelFamily::SDXL) out.text_encoder_2 = infer_clip2_config(all);
  }
  // The parts load_model keeps (EMA copies, scheduler buffers and the VAE's
  // training loss are ignored by the loader, so here too).
  for (const auto& [name, info] : file.tensors()) {
    if (starts_with(name, kLDMUNetPrefix)) {
      out.unet_parameters += element_count(info);
    } else if (starts_with(name, kLDMVAEPrefix) && !starts_with(name, "first_stage_model.loss.")) {
      out.vae_parameters += element_count(info);
    } else if (starts_with(name, "cond_stage_model.") || starts_with(name, "conditioner.")) {
      out.text_encoder_parameters += element_count(info);
    } else {
      continue;
    }
    out.stored_weight_bytes += stored_bytes(info);
  }
  return out;
}

ModelFootprint model_footprint(const StableDiffusionModel& model) {
  ModelFootprint out;
  auto count = [&out](const torch::nn::Module& m) {
    int64_t n = 0;
    for (const auto& p : m.parameters()) {
      n += p.numel();
      out.stored_weight_bytes += static_cast<int64_t>(p.nbytes());
    }
    return n;
  };
  out.unet = model.unet->config();
  out.vae = model.vae->config();
  out.text_encoder = model.text_encoder->config();
  out.unet_parameters = count(*model.unet);
  out.vae_parameters = count(*model.vae);
  out.text_encoder_parameters = count(*model.text_encoder);
  if (model.text_encoder_2) {
    out.text_encoder_2 = model.text_encoder_2->config();
    out.text_encoder_parameters += count(*model.text_encoder_2);
  }
  return out;
}

// ---- activations --------------------------------------------------------------

namespace {

// Bytes alive at once while a forward pass runs, and their high-water mark.
// `spike` is a buffer that lives only inside one operation.
class Live {
 public:
  void add(double bytes) {
    now_ += bytes;
    peak_ = std::max(peak_, now_);
  }
  void sub(double bytes) { now_ -= bytes; }
  void spike(double bytes) { peak_ = std::max(peak_, now_ + bytes); }
  double peak() const { return peak_; }

 private:
  double now_ = 0, peak_ = 0;
};

// One model's forward walk: element size, device, attention implementation.
struct Walk {
  Live live;
  double e = 4;     // bytes per element of the compute dtype
  bool cpu = true;  // convolutions through oneDNN reorder their input and output
  bool sdpa = TORCH_VERSION_MAJOR >= 2;  // fused attention: no score matrix

  // A convolution whose `in` bytes are alive: allocates its output.
  void conv(double in, double out) {
    live.add(out);
    // oneDNN (CPU) converts NCHW input and output to its blocked layout and
    // back; cuDNN's workspace is bounded by the input size in practice.
    live.spike(cpu ? in + out : 0.5 * in);
  }

  // diffusers ResnetBlock2D on a tensor of `cin` x `p` elements that the
  // caller holds; leaves the `cout` x `p` output alive.
  void resnet(double cin, double cout, double p) {
    const double in = cin * p * e, out = cout * p * e;
    live.add(in);   // norm1 + silu
    conv(in, out);  // conv1
    live.sub(in);
    live.add(out);                   // h + temb (new tensor)
    live.sub(out);                   // conv1's output
    live.add(out);                   // norm2 + silu
    live.sub(out);                   // h
    conv(out, out);                  // conv2
    live.sub(out);                   // norm2's output
    if (cin != cout) conv(in, out);  // shortcut
    live.add(out);                   // shortcut + h
    live.sub(out);                   // conv2's output
    if (cin != cout) live.sub(out);
  }

  // Attention of q [b, heads, lq, d] over lk keys (src/nn/attention.cpp).
  void attention(double b, double heads, double lq, double lk, double d, double score_e) {
    const double q = b * lq * heads * d * e, kv = b * lk * heads * d * e;
    // reshape of the head-split (transposed) views: copies of q, k and v.
    live.add(q + 2 * kv);
    if (sdpa) {
      live.spike(q);  // output (+ the kernel's small tiles)
    } else {
      // blocked_attention: score blocks of at most 2^22 elements (or one row
      // of keys), scores and probabilities alive together.
      const double bh = b * heads;
      const double block = 4194304.0;
      const double rows = std::min(lq, std::max(1.0, std::floor(block / lk)));
      const double hs = std::min(bh, std::max(1.0, std::floor(block / (rows * lk))));
      live.spike(q + 2 * hs * rows * lk * score_e + hs * rows * d * e);
    }
    live.add(q);  // output
    live.sub(q + 2 * kv);
  }

  // diffusers Transformer2DModel (+ BasicTransformerBlocks) on `c` x `p`
  // elements the caller holds; leaves the output alive.
  void transformer(double b, double c, double p, double heads, double layers, double context_len,
                   double context_dim, double score_e) {
    const double x = c * p * e;
    live.add(x);  // group norm
    conv(x, x);   // proj_in
    live.sub(x);
    live.add(x);  // permute + reshape copy
    live.sub(x);
    const double d = c / heads;
    for (int l = 0; l < static_cast<int>(layers); ++l) {
      // attn1(norm1(h)) + h
      live.add(x);      // norm1
      live.add(3 * x);  // to_q, to_k, to_v
      live.sub(x);
      attention(b, heads, p / b, p / b, d, score_e);
      live.sub(3 * x);
      live.add(x);  // merge_heads copy
      live.add(x);  // to_out
      live.sub(x);
      live.sub(x);  // attention output
      live.add(x);  // + h
      live.sub(x);  // to_out's output
      live.sub(x);  // the old h
      // attn2(norm2(h), context) + h
      live.add(x);  // norm2
      live.add(x);  // to_q (k, v of the context are small)
      live.sub(x);
      attention(b, heads, p / b, context_len, d, score_e);
      live.sub(x);
      (void)context_dim;
      live.add(2 * x);  // merge copy, to_out
      live.sub(x);
      live.sub(x);
      live.add(x);
      live.sub(x);
      live.sub(x);
      // ff(norm3(h)) + h: GEGLU proj to 8c, gelu(gate) 4c, hidden * gate 4c
      live.add(x);  // norm3
      live.add(8 * x);
      live.sub(x);
      live.add(4 * x);
      live.add(4 * x);
      live.sub(4 * x);
      live.sub(8 * x);
      live.add(x);  // out
      live.sub(4 * x);
      live.add(x);  // + h
      live.sub(x);
      live.sub(x);
    }
    live.add(x);  // reshape + permute + contiguous
    conv(x, x);   // proj_out
    live.sub(x);
    live.add(x);  // + input
    live.sub(x);
  }

  // Nearest 2x upsampling + conv of `c` x `p` elements held by the caller;
  // leaves the `c` x 4p output alive.
  void upsample(double c, double p) {
    const double big = c * 4 * p * e;
    live.add(big);
    conv(big, big);
    live.sub(big);
  }
};

int64_t ceil_half(int64_t v) { return (v + 1) / 2; }

bool has_cross_attention(const std::string& block_type) {
  return block_type.find("CrossAttn") != std::string::npos;
}

// One UNet forward on `batch` latents of h x w (diffusers UNet2DConditionModel).
double unet_peak(const UNetConfig& config, double e, bool cpu, double batch, int64_t h, int64_t w,
                 double context_len) {
  Walk walk;
  walk.e = e;
  walk.cpu = cpu;
  const double score_e = config.upcast_attention ? 4 : e;
  const auto& ch = config.block_out_channels;
  const size_t blocks = ch.size();
  const double layers = config.layers_per_block;
  auto layers_at = [&](size_t i) {
    const auto& t = config.transformer_layers_per_block;
    return t.empty() ? 1.0 : static_cast<double>(i < t.size() ? t[i] : t.back());
  };
  struct Skip {
    double bytes;
    double channels;
  };
  std::vector<Skip> skips;
  std::vector<int64_t> hs{h}, ws{w};
  for (size_t i = 1; i < blocks; ++i) {
    hs.push_back(ceil_half(hs.back()));
    ws.push_back(ceil_half(ws.back()));
  }
  auto pixels = [&](size_t level) { return batch * static_cast<double>(hs[level] * ws[level]); };

  walk.live.add(config.in_channels * pixels(0) * e);  // the input
  walk.conv(config.in_channels * pixels(0) * e, ch[0] * pixels(0) * e);
  double hidden = ch[0];
  skips.push_back({ch[0] * pixels(0) * e, static_cast<double>(ch[0])});
  for (size_t i = 0; i < blocks; ++i) {
    const double c = ch[i], p = pixels(i);
    const bool attn =
        i < config.down_block_types.size() && has_cross_attention(config.down_block_types[i]);
    for (int j = 0; j < static_cast<int>(layers); ++j) {
      walk.resnet(hidden, c, p);
      hidden = c;
      if (attn) {
        walk.transformer(batch, c, p, config.heads(i), layers_at(i), context_len,
                         config.cross_attention_dim, score_e);
        walk.live.sub(c * p * e);  // the resnet output
      }
      skips.push_back({c * p * e, c});
    }
    if (i + 1 < blocks) {
      walk.conv(c * p * e, c * pixels(i + 1) * e);  // stride-2 conv
      skips.push_back({c * pixels(i + 1) * e, c});
    }
  }
  // Mid block: resnet, transformer, resnet at the deepest level.
  {
    const double c = ch.back(), p = pixels(blocks - 1);
    walk.resnet(c, c, p);
    walk.transformer(batch, c, p, config.heads(blocks - 1), layers_at(blocks - 1), context_len,
                     config.cross_attention_dim, score_e);
    walk.live.sub(c * p * e);
    walk.resnet(c, c, p);
    walk.live.sub(c * p * e);
  }
  // Up blocks consume the skips, deepest first.
  double x_bytes = ch.back() * pixels(blocks - 1) * e;
  hidden = ch.back();
  for (size_t u = 0; u < blocks; ++u) {
    const size_t level = blocks - 1 - u;
    const double c = ch[level], p = pixels(level);
    const bool attn =
        u < config.up_block_types.size() && has_cross_attention(config.up_block_types[u]);
    for (int j = 0; j < static_cast<int>(layers) + 1 && !skips.empty(); ++j) {
      const Skip s = skips.back();
      skips.pop_back();
      const double cat = (hidden + s.channels) * p * e;
      walk.live.add(cat);
      walk.live.sub(x_bytes + s.bytes);
      walk.resnet(hidden + s.channels, c, p);
      walk.live.sub(cat);
      hidden = c;
      x_bytes = c * p * e;
      if (attn) {
        walk.transformer(batch, c, p, config.heads(level), layers_at(level), context_len,
                         config.cross_attention_dim, score_e);
        walk.live.sub(x_bytes);
      }
    }
    if (u + 1 < blocks) {
      walk.upsample(c, p);
      walk.live.sub(x_bytes);
      x_bytes = c * pixels(level - 1) * e;
    }
  }
  walk.live.add(x_bytes);  // norm + silu
  walk.conv(x_bytes, config.out_channels * pixels(0) * e);
  return walk.live.peak();
}

// The VAE decoder on `batch` latents of h x w (diffusers Decoder), plus the
// float image conversions that follow it (to_unit_images, uint8).
double vae_decoder_peak(const VAEConfig& config, double e, bool cpu, bool sdpa, double batch,
                        int64_t h, int64_t w) {
  Walk walk;
  walk.e = e;
  walk.cpu = cpu;
  walk.sdpa = sdpa;
  const auto& ch = config.block_out_channels;
  const size_t blocks = ch.size();
  double p = batch * static_cast<double>(h * w);
  const double c_top = ch.back();
  walk.live.add(config.latent_channels * p * e);
  walk.conv(config.latent_channels * p * e, c_top * p * e);  // conv_in
  // Mid block: resnet, single-head attention over all h*w pixels, resnet.
  walk.resnet(c_top, c_top, p);
  walk.live.sub(c_top * p * e);
  if (config.mid_block_add_attention) {
    const double x = c_top * p * e;
    walk.live.add(x);      // group norm
    walk.live.add(x);      // transpose copy feeding the projections
    walk.live.add(3 * x);  // q, k, v
    walk.live.sub(2 * x);
    walk.attention(batch, 1, p / batch, p / batch, c_top, e);
    walk.live.sub(3 * x);
    walk.live.add(3 * x);  // merge, to_out, reshape back
    walk.live.add(x);      // + residual
    walk.live.sub(4 * x);
    walk.live.sub(x);
  }
  walk.resnet(c_top, c_top, p);
  walk.live.sub(c_top * p * e);
  double hidden = c_top;
  for (size_t u = 0; u < blocks; ++u) {
    const double c = ch[blocks - 1 - u];
    for (int j = 0; j < config.layers_per_block + 1; ++j) {
      walk.resnet(hidden, c, p);
      walk.live.sub(hidden * p * e);
      hidden = c;
    }
    if (u + 1 < blocks) {
      walk.upsample(c, p);
      walk.live.sub(c * p * e);
      p *= 4;
    }
  }
  const double x = hidden * p * e;
  walk.live.add(x);  // conv_norm_out + silu
  walk.conv(x, config.out_channels * p * e);
  walk.live.sub(2 * x);
  // to float32, / 2 + 0.5, clamp, permute, contiguous, * 255, round, uint8.
  walk.live.spike(4 * config.out_channels * p * 4.0);
  return walk.live.peak();
}

// The VAE encoder on one image of H x W pixels (img2img).
double vae_encoder_peak(const VAEConfig& config, double e, bool cpu, bool sdpa, int64_t height,
                        int64_t width) {
  Walk walk;
  walk.e = e;
  walk.cpu = cpu;
  walk.sdpa = sdpa;
  const auto& ch = config.block_out_channels;
  double p = static_cast<double>(height * width);
  walk.live.add(config.in_channels * p * 4.0 * 3);  // float conversions of the init image
  walk.conv(config.in_channels * p * e, ch[0] * p * e);
  double hidden = ch[0];
  for (size_t i = 0; i < ch.size(); ++i) {
    for (int j = 0; j < config.layers_per_block; ++j) {
      walk.resnet(hidden, ch[i], p);
      walk.live.sub(hidden * p * e);
      hidden = ch[i];
    }
    if (i + 1 < ch.size()) {
      walk.live.add(hidden * p * e);  // pad (0, 1, 0, 1)
      walk.conv(hidden * p * e, hidden * (p / 4) * e);
      walk.live.sub(2 * hidden * p * e);
      p /= 4;
    }
  }
  walk.resnet(hidden, hidden, p);
  if (config.mid_block_add_attention) walk.attention(1, 1, p, p, hidden, e);
  return walk.live.peak();
}

double text_encoder_peak(const CLIPTextConfig& config, double e, double sequences) {
  // [sequences, 77, hidden]: a dozen of them (residual, norms, q/k/v, MLP 4x)
  // plus the heads x 77 x 77 scores.
  const double l = config.max_position_embeddings;
  return sequences *
         (l * (6.0 * config.hidden_size + 2.0 * config.intermediate_size) +
          2.0 * config.num_attention_heads * l * l) *
         e;
}

}  // namespace

MemoryEstimate estimate_memory(const ModelFootprint& model, const MemorySettings& settings,
                               const MemoryRequest& request) {
  MemoryEstimate out;
  const double e = static_cast<double>(c10::elementSize(settings.dtype));
  const double vae_e = static_cast<double>(c10::elementSize(settings.vae_dtype));
  const bool cpu = !settings.device.is_cuda();
  const bool sdpa = TORCH_VERSION_MAJOR >= 2;
  out.weights = static_cast<int64_t>(
      static_cast<double>(model.unet_parameters + model.text_encoder_parameters) * e +
      static_cast<double>(model.vae_parameters) * vae_e);
  // Kept as stored: the file's bytes, and one layer at a time converted (the
  // largest is the UNet's first up-block convolution, 2c -> c channels 3x3
  // at the deepest level, or the VAE decoder's widest one).
  double layer_copy = 0;
  const bool as_stored = settings.weights_as_stored && cpu && model.stored_weight_bytes > 0;
  if (as_stored) {
    out.weights = model.stored_weight_bytes;
    const double c = model.unet.block_out_channels.back();
    const double v = model.vae.block_out_channels.back();
    layer_copy = std::max(2 * c * c * 9 * e, v * v * 9 * vae_e);
  }

  const int factor =
      1 << std::max<int>(0, static_cast<int>(model.vae.block_out_channels.size()) - 1);
  const int64_t lh = std::max(1, request.height / factor), lw = std::max(1, request.width / factor);
  const double unet_batch = request.batch_size * (request.guided ? 2.0 : 1.0);
  const double context_len = 77.0 * std::max(1, request.prompt_chunks);
  const double latents = unet_batch * model.unet.in_channels * static_cast<double>(lh * lw) * 4.0;

  // SDXL's two encoders run one after the other: the larger one peaks.
  const double sequences = (request.guided ? 2.0 : 1.0) * std::max(1, request.prompt_chunks);
  out.text_encoder = static_cast<int64_t>(text_encoder_peak(model.text_encoder, e, sequences));
  if (model.text_encoder_2)
    out.text_encoder =
        std::max(out.text_encoder,
                 static_cast<int64_t>(text_encoder_peak(*model.text_encoder_2, e, sequences)));
  // The sampler's own tensors (latents, noise, model output, history of the
  // multistep samplers) in float32 at most: a few latent-sized tensors.
  out.unet = static_cast<int64_t>(unet_peak(model.unet, e, cpu, unet_batch, lh, lw, context_len) +
                                  8 * latents);
  if (request.vae_tiling && (lh > 64 || lw > 64)) {
    // diffusers' tiled_decode: 64-latent tiles every 48, all decoded tiles
    // kept (3 channels) and blended into rows, then the full image.
    const int64_t th = std::min<int64_t>(lh, 64), tw = std::min<int64_t>(lw, 64);
    const double tiles = std::ceil(lh / 48.0) * std::ceil(lw / 48.0);
    const double tile_pixels = static_cast<double>(th * tw) * factor * factor;
    const double image = request.batch_size * 3.0 * request.width * request.height;
    out.vae_decode = static_cast<int64_t>(
        vae_decoder_peak(model.vae, vae_e, cpu, sdpa, request.batch_size, th, tw) +
        request.batch_size * tiles * 3 * tile_pixels * vae_e + 2 * image * vae_e + 4 * image * 4);
  } else {
    out.vae_decode = static_cast<int64_t>(
        vae_decoder_peak(model.vae, vae_e, cpu, sdpa, request.batch_size, lh, lw));
  }
  if (request.img2img)
    out.vae_encode = static_cast<int64_t>(vae_encoder_peak(model.vae, vae_e, cpu, sdpa,
                                                           static_cast<int64_t>(lh) * factor,
                                                           static_cast<int64_t>(lw) * factor));

  struct Stage {
    const char* name;
    int64_t bytes;
  };
  Stage peak{"text encoder", out.text_encoder};
  if (as_stored) {
    // Only the computing model's file pages are mapped in
    // (make_weights_resident): the largest model's stored weights count.
    // Its activations still add up with the VAE's below, as measured (SD1.5
    // 512x512 peaked at 2.71 GiB, above UNet weights + UNet activations):
    // conservative. Parts are assumed stored alike.
    const double per_parameter =
        static_cast<double>(model.stored_weight_bytes) /
        static_cast<double>(std::max<int64_t>(
            1, model.unet_parameters + model.vae_parameters + model.text_encoder_parameters));
    out.weights = static_cast<int64_t>(
        static_cast<double>(std::max(
            {model.unet_parameters, model.vae_parameters, model.text_encoder_parameters})) *
        per_parameter);
  }
  if (cpu) {
    // sdgen keeps freed heap blocks (below glibc's 32 MiB mmap threshold) in
    // the process (runtime.cpp), so the UNet's many mid-sized activations stay
    // resident while the VAE's large ones are mapped on top: they add up
    // (measured, SD1.5 fp32: 512x512 peaks 1.5 GiB above 64x64, 256x256 0.6).
    const int64_t vae = std::max(out.vae_decode, out.vae_encode);
    peak = {out.vae_decode >= out.vae_encode ? "UNet + VAE decode" : "UNet + VAE encode",
            out.unet + vae};
  } else {
    // The caching allocator reuses freed blocks, but a captured CUDA graph
    // keeps the UNet's activations in its own pool while the VAE decodes.
    const int64_t decode = out.vae_decode + (settings.cuda_graphs ? out.unet : 0);
    for (const Stage& s : {Stage{"UNet", out.unet}, Stage{"VAE decode", decode},
                           Stage{"VAE encode", out.vae_encode}})
      if (s.bytes > peak.bytes) peak = s;
  }
  out.peak_stage = peak.name;
  // Runtime: libtorch's own resident memory and the tokenizer (the tiny
  // model's whole run peaks at 210 MiB on the CPU), load-time transients
  // (SD1.5 fp32 at 64x64 peaks 0.45 GiB above its weights) and allocator
  // slack; on CUDA the libraries' workspaces and the allocator's rounding.
  out.overhead = cpu ? 256 * kMiB + out.weights / 10 + peak.bytes / 4 : 300 * kMiB + peak.bytes / 5;
  out.overhead += static_cast<int64_t>(layer_copy);
  out.lora_copies = std::max<int64_t>(0, request.lora_copy_bytes);
  out.total = out.weights + out.lora_copies + peak.bytes + out.overhead;
  return out;
}

}  // namespace sdgen
