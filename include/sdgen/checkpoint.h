#pragma once

// Original single-file Stable Diffusion checkpoints (the CompVis / Stability
// "LDM" layout that A1111 and ComfyUI users have) -> sdgen's diffusers-named
// modules.
//
// A single file holds three models under three key prefixes:
//   model.diffusion_model.*          UNet, LDM names (input_blocks / middle_block / output_blocks)
//   first_stage_model.*              VAE, LDM names (encoder.down.N.block.M, mid.attn_1, ...)
//   cond_stage_model.transformer.*   SD1.x text encoder, Hugging Face CLIP names ("text_model.")
//   cond_stage_model.model.*         SD2.x text encoder, OpenCLIP names (transformer.resblocks.N)
// SDXL base files hold two text encoders instead, and a UNet with label_emb.*:
//   conditioner.embedders.0.transformer.*  CLIP ViT-L, Hugging Face names ("text_model.")
//   conditioner.embedders.1.model.*        OpenCLIP ViT-bigG, OpenCLIP names, text_projection
// Everything else (model_ema.*, alphas_cumprod and the other scheduler buffers,
// first_stage_model.loss.*, *.position_ids, text_projection, logit_scale) is
// ignored. Unknown tensors under the three prefixes are never dropped: they are
// passed on under their original full key, so the strict load_weights() reports
// them as unexpected by name.
//
// Typical use:
//   TensorMap all = tensors_with_prefix(SafeTensorsFile(path), "");
//   ModelFamily family = detect_family(all);
//   UNetConfig unet_config = infer_unet_config(all, family);  // or from a config.json
//   ...
//   ConvertedWeights w = convert_single_file(all, family, unet_config, vae_config, clip_config);
//   load_weights(*unet, w.unet, "unet (" + path + ")");
//
// The conversion is a renaming: tensors stay zero-copy views of the input
// (reshapes and q/k/v splits are views too); dtypes are left as stored.

#include <string>

#include "sdgen/config.h"
#include "sdgen/weights.h"

namespace sdgen {

inline constexpr const char kLDMUNetPrefix[] = "model.diffusion_model.";
inline constexpr const char kLDMVAEPrefix[] = "first_stage_model.";
inline constexpr const char kLDMCLIPPrefix[] = "cond_stage_model.transformer.";  // SD1.x
inline constexpr const char kOpenCLIPPrefix[] = "cond_stage_model.model.";       // SD2.x
inline constexpr const char kSDXLCLIPPrefix[] = "conditioner.embedders.0.transformer.";
inline constexpr const char kSDXLOpenCLIPPrefix[] = "conditioner.embedders.1.model.";

enum class ModelFamily { SD1, SD2, SDXL };

const char* family_name(ModelFamily family);  // "SD1" / "SD2" / "SDXL"

// SD1 when the text encoder is HF CLIP (cond_stage_model.transformer.*), SD2
// when it is OpenCLIP (cond_stage_model.model.*), SDXL when the UNet has
// label_emb.* and the two conditioner.embedders text encoders; a file without
// a text encoder is told apart by the UNet's cross-attention width (768 vs
// 1024). Throws Error with what the file looks like instead when it is not a
// supported single file: empty, text-encoder-only, VAE-only, a diffusers
// component file, a LoRA, an SDXL refiner, an SDXL file missing a text encoder.
ModelFamily detect_family(const TensorMap& all);

// UNet architecture from tensor shapes: in/out channels, block_out_channels,
// layers_per_block, down/up block types (cross-attention or not), transformer
// depth, cross_attention_dim, use_linear_projection. Head counts are not in the
// weights and follow the family: SD1 8 heads per block (SD1.5), SD2 64 channels
// per head (attention_head_dim [5, 10, 20, 20] for SD2.1) with upcast_attention
// and sample_size 96 (SD2.1 768-v; override for 2.x-base); SDXL 64 channels
// per head, the "text_time" addition embedding (its widths from label_emb and
// the OpenCLIP text_projection) and sample_size 128. Throws Error naming the
// missing key or inconsistent shape.
UNetConfig infer_unet_config(const TensorMap& all, ModelFamily family);

// VAE architecture from tensor shapes (channels, blocks, layers, latent
// channels, quant convs, mid attention); scaling_factor 0.18215, or for SDXL
// 0.13025 with force_upcast and sample_size 1024 (SDXL base's vae config).
VAEConfig infer_vae_config(const TensorMap& all, ModelFamily family = ModelFamily::SD1);

// Text encoder from tensor shapes, 64 channels per head (true of both CLIP
// ViT-L/14 and OpenCLIP ViT-H/14). SD1: quick_gelu. SD2: gelu, and a full
// 24-layer OpenCLIP tower gives num_hidden_layers 23 (SD2 conditions on the
// penultimate layer; diffusers' SD2 text encoder keeps 23). Throws Error when
// the text encoder is missing or its width is not a multiple of 64. For SDXL
// this is the first encoder (CLIP ViT-L, as SD1).
CLIPTextConfig infer_clip_config(const TensorMap& all, ModelFamily family);
// SDXL's second encoder (OpenCLIP ViT-bigG: gelu, every layer kept, with its
// text_projection).
CLIPTextConfig infer_clip2_config(const TensorMap& all);

// Converted weights, keyed as the modules' named_parameters() (diffusers names;
// the text encoder without "text_model.").
struct ConvertedWeights {
  TensorMap unet, vae, text_encoder;
  TensorMap text_encoder_2;  // SDXL only
};

// The converters below; throws Error when a part is absent from `all`.
// clip2_config: SDXL's second encoder (ignored for SD1/SD2).
ConvertedWeights convert_single_file(const TensorMap& all, ModelFamily family,
                                     const UNetConfig& unet_config, const VAEConfig& vae_config,
                                     const CLIPTextConfig& clip_config,
                                     const CLIPTextConfig& clip2_config = {});

// model.diffusion_model.* -> UNet2DConditionModel names (diffusers'
// convert_ldm_unet_checkpoint). The block mapping follows
// config.layers_per_block; proj_in/proj_out become linear [C, C] or conv
// [C, C, 1, 1] as config.use_linear_projection asks.
TensorMap convert_ldm_unet(const TensorMap& all, const UNetConfig& config);

// One LDM UNet name (without "model.diffusion_model.", e.g.
// "input_blocks.4.1.proj_in.weight") -> its diffusers name, "" when unknown;
// what convert_ldm_unet does to each key (LoRA files use these names too).
std::string ldm_unet_name_to_diffusers(const std::string& name, const UNetConfig& config);

// first_stage_model.* -> AutoencoderKL names (diffusers'
// convert_ldm_vae_checkpoint); mid attention 1x1 convs become linear weights.
TensorMap convert_ldm_vae(const TensorMap& all, const VAEConfig& config);

// cond_stage_model.* -> CLIPTextModel names (SD1: prefix removal; SD2:
// diffusers' convert_open_clip_checkpoint, fused in_proj split into q/k/v).
// Layers at or beyond config.num_hidden_layers are dropped (SD2's unused 24th).
// SDXL: the first encoder (conditioner.embedders.0.transformer.*).
TensorMap convert_ldm_text_encoder(const TensorMap& all, ModelFamily family,
                                   const CLIPTextConfig& config);
// SDXL's conditioner.embedders.1.model.* -> CLIPTextModelWithProjection names
// (text_projection [hidden, proj] transposed to a Linear weight).
TensorMap convert_ldm_text_encoder_2(const TensorMap& all, const CLIPTextConfig& config);

}  // namespace sdgen
