// Prompt encoding for Pipeline: A1111's emphasis syntax, BREAK and 75-token
// chunks on top of the CLIP tokenizer and text encoder.

#include <algorithm>

#include "sdgen/error.h"
#include "sdgen/extra_networks.h"
#include "sdgen/pipeline.h"
#include "sdgen/prompt_weights.h"

namespace sdgen {
namespace {

// The chunks of one prompt (prompt_weights.h) for a tokenizer.
std::vector<PromptChunk> prompt_chunks(const Tokenizer& tokenizer, const std::string& prompt,
                                       Pipeline::LongPrompt mode) {
  ChunkingOptions options;
  options.chunk_length = tokenizer.max_length() - 2;
  // A1111 looks up ",</w>" in the vocabulary; "," alone encodes to exactly it.
  const auto comma = tokenizer.encode(",");
  options.comma_token = comma.size() == 1 ? comma[0] : -1;
  // A1111 cuts extra-network tags (<lora:NAME:W>) out of a prompt before it
  // parses the rest; whoever applies the LoRAs reads them (extra_networks.h).
  const auto parsed = parse_prompt_attention(parse_extra_networks(prompt).prompt);
  auto tokenize = [&tokenizer](const std::string& text) { return tokenizer.encode(text); };
  return mode == Pipeline::LongPrompt::truncate ? truncate_prompt_chunks(parsed, tokenize, options)
                                                : split_prompt_chunks(parsed, tokenize, options);
}

}  // namespace

int Pipeline::prompt_chunk_count(const std::string& prompt) const {
  size_t count = prompt_chunks(*model_.tokenizer, prompt, long_prompt_).size();
  if (model_.tokenizer_2)
    count = std::max(count, prompt_chunks(*model_.tokenizer_2, prompt, long_prompt_).size());
  return static_cast<int>(count);
}

namespace {

struct EncoderOutput {
  torch::Tensor hidden;  // [n, chunks * 77, hidden]
  torch::Tensor pooled;  // [n, P]: text_embeds (with projection) or pooled, of each first chunk
};

// Follows A1111 sd_hijack_clip.FrozenCLIPEmbedderWithCustomWordsBase.forward /
// process_tokens and sd_emphasis.EmphasisOriginal.after_transformers: every
// chunk becomes [bos] + tokens + [eos] + padding (the tokenizer's pad token, as
// A1111 does for SD2 and diffusers for both), prompts with fewer chunks get
// empty chunks, each chunk is encoded on its own and, when a multiplier differs
// from 1, z * multipliers is rescaled to the mean z had before (per prompt and
// chunk; A1111 takes the mean over its batch of identical-length chunks).
// Chunks are concatenated along the sequence (torch.hstack); the pooled output
// is the first chunk's, before emphasis (A1111: zs[0].pooled). A one-chunk
// prompt without emphasis is encoded exactly as diffusers' encode_prompt.
EncoderOutput encode_with(const Tokenizer& tokenizer, CLIPTextModel& encoder,
                          const std::vector<std::string>& prompts, int clip_skip, HiddenNorm norm,
                          size_t chunk_count, Pipeline::LongPrompt mode, torch::Device device) {
  const int64_t length = tokenizer.max_length();
  // encode_padded("") = [bos, eos, pad, ...]: the special ids of any tokenizer.
  const auto empty = tokenizer.encode_padded("");
  if (length < 3 || static_cast<int64_t>(empty.size()) != length)
    throw Error("tokenizer max_length " + std::to_string(length) + " is too small to encode");
  const int64_t bos = empty[0], eos = empty[1], pad = empty[2];

  std::vector<std::vector<PromptChunk>> all;
  for (const auto& p : prompts) all.push_back(prompt_chunks(tokenizer, p, mode));
  const int64_t rows = static_cast<int64_t>(prompts.size() * chunk_count);
  std::vector<int64_t> ids;
  std::vector<float> multipliers;
  ids.reserve(static_cast<size_t>(rows * length));
  multipliers.reserve(static_cast<size_t>(rows * length));
  bool weighted = false;
  const PromptChunk none;
  for (const auto& chunks : all) {
    for (size_t c = 0; c < chunk_count; ++c) {
      const PromptChunk& chunk = c < chunks.size() ? chunks[c] : none;
      const size_t start = ids.size();
      ids.push_back(bos);
      multipliers.push_back(1.0f);
      for (size_t t = 0; t < chunk.tokens.size() && t + 2 < static_cast<size_t>(length); ++t) {
        ids.push_back(chunk.tokens[t]);
        multipliers.push_back(static_cast<float>(chunk.multipliers[t]));
        weighted = weighted || chunk.multipliers[t] != 1.0;
      }
      ids.push_back(eos);
      multipliers.push_back(1.0f);
      ids.resize(start + static_cast<size_t>(length), pad);
      multipliers.resize(start + static_cast<size_t>(length), 1.0f);
    }
  }
  auto input = torch::tensor(ids, torch::kInt64).view({rows, length}).to(device);
  const auto out = encoder->forward(input, clip_skip, norm);
  auto z = out.hidden;
  if (weighted) {
    auto m = torch::tensor(multipliers, torch::kFloat32).view({rows, length, 1}).to(device);
    auto zf = z.to(torch::kFloat32);
    const auto original_mean = zf.mean({1, 2}, /*keepdim=*/true);
    const auto scaled = zf * m;
    const auto new_mean = scaled.mean({1, 2}, /*keepdim=*/true);
    // Rows (chunks) without emphasis keep their values bit for bit.
    const auto row_weighted = (m != 1.0f).any(1, /*keepdim=*/true);
    zf = torch::where(row_weighted, scaled * (original_mean / new_mean), zf);
    z = zf.to(z.scalar_type());
  }
  const int64_t n = static_cast<int64_t>(prompts.size());
  const int64_t chunks = static_cast<int64_t>(chunk_count);
  EncoderOutput result;
  // [n * chunks, 77, hidden] -> [n, chunks * 77, hidden].
  result.hidden = z.reshape({n, chunks * length, z.size(2)});
  const auto pooled = out.text_embeds.defined() ? out.text_embeds : out.pooled;
  result.pooled = pooled.view({n, chunks, pooled.size(1)}).select(1, 0);
  return result;
}

}  // namespace

// SDXL (diffusers' StableDiffusionXLPipeline.encode_prompt, A1111's SDXL
// conditioner): each encoder tokenizes and encodes the prompt on its own
// (chunks and emphasis per encoder, as A1111's two embedders do), the chosen
// hidden states are taken without the final layer norm and concatenated
// along the feature axis, and the pooled output is the second encoder's
// projected one. Clip skip k selects hidden_states[-max(k, 2)]: SDXL
// conditions on the penultimate layer, so 1 and 2 are the same, as in A1111
// and ComfyUI (diffusers' clip_skip = k - 2 for k > 2).
PromptEmbeddings Pipeline::encode_prompt_embeddings(const std::vector<std::string>& prompts,
                                                    int clip_skip, int min_chunks) {
  torch::NoGradGuard no_grad;
  size_t chunk_count = static_cast<size_t>(std::max(min_chunks, 1));
  for (const auto& p : prompts)
    chunk_count = std::max(chunk_count, static_cast<size_t>(prompt_chunk_count(p)));
  PromptEmbeddings out;
  if (!model_.is_sdxl()) {
    out.context =
        encode_with(*model_.tokenizer, text_encoder_, prompts, clip_skip,
                    HiddenNorm::final_layer_norm, chunk_count, long_prompt_, model_.device)
            .hidden.to(model_.dtype);
    return out;
  }
  const int layer = std::max(clip_skip, 2);
  const auto first = encode_with(*model_.tokenizer, text_encoder_, prompts, layer, HiddenNorm::none,
                                 chunk_count, long_prompt_, model_.device);
  const auto second = encode_with(*model_.tokenizer_2, text_encoder_2_, prompts, layer,
                                  HiddenNorm::none, chunk_count, long_prompt_, model_.device);
  out.context = torch::cat({first.hidden, second.hidden}, -1).to(model_.dtype);
  out.pooled = second.pooled.to(model_.dtype);
  return out;
}

torch::Tensor Pipeline::encode_prompts(const std::vector<std::string>& prompts, int clip_skip,
                                       int min_chunks) {
  return encode_prompt_embeddings(prompts, clip_skip, min_chunks).context;
}

}  // namespace sdgen
