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
                                       Pipeline::LongPrompt mode, const EmbeddingFinder& finder) {
  ChunkingOptions options;
  options.find_embedding = finder;
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

namespace {

// A1111 EmbeddingDatabase.find_embedding_at_position: the longest embedding
// name (as token ids) that starts at `position`.
template <typename Entries>
EmbeddingFinder finder_for(const Entries& entries, bool second) {
  if (entries.empty()) return {};
  return [&entries, second](const std::vector<int64_t>& tokens, size_t position) {
    EmbeddingMatch best;
    for (size_t i = 0; i < entries.size(); ++i) {
      const auto& ids = second ? entries[i].name_ids_2 : entries[i].name_ids;
      if (ids.empty() || ids.size() <= best.name_tokens || position + ids.size() > tokens.size())
        continue;
      if (std::equal(ids.begin(), ids.end(),
                     tokens.begin() + static_cast<std::ptrdiff_t>(position)))
        best = {static_cast<int>(i), entries[i].embedding.count(), ids.size()};
    }
    return best;
  };
}

}  // namespace

int Pipeline::prompt_chunk_count(const std::string& prompt) const {
  size_t count =
      prompt_chunks(*model_.tokenizer, prompt, long_prompt_, finder_for(embeddings_, false)).size();
  if (model_.tokenizer_2)
    count = std::max(count, prompt_chunks(*model_.tokenizer_2, prompt, long_prompt_,
                                          finder_for(embeddings_, true))
                                .size());
  return static_cast<int>(count);
}

void Pipeline::set_embeddings(std::vector<TextualInversion> embeddings) {
  embeddings_.clear();
  for (auto& e : embeddings) {
    EmbeddingEntry entry;
    entry.name_ids = model_.tokenizer->encode(e.name);
    if (model_.tokenizer_2) entry.name_ids_2 = model_.tokenizer_2->encode(e.name);
    entry.embedding = std::move(e);
    embeddings_.push_back(std::move(entry));
  }
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
// The vectors each embedding gives this encoder, in the finder's numbering.
using EmbeddingVectors = std::vector<const torch::Tensor*>;

EncoderOutput encode_with(const Tokenizer& tokenizer, CLIPTextModel& encoder,
                          const std::vector<std::string>& prompts, int clip_skip, HiddenNorm norm,
                          size_t chunk_count, Pipeline::LongPrompt mode, torch::Device device,
                          const EmbeddingFinder& finder, const EmbeddingVectors& vectors,
                          std::vector<int>* used) {
  const int64_t length = tokenizer.max_length();
  // encode_padded("") = [bos, eos, pad, ...]: the special ids of any tokenizer.
  const auto empty = tokenizer.encode_padded("");
  if (length < 3 || static_cast<int64_t>(empty.size()) != length)
    throw Error("tokenizer max_length " + std::to_string(length) + " is too small to encode");
  const int64_t bos = empty[0], eos = empty[1], pad = empty[2];

  std::vector<std::vector<PromptChunk>> all;
  for (const auto& p : prompts) all.push_back(prompt_chunks(tokenizer, p, mode, finder));
  const int64_t rows = static_cast<int64_t>(prompts.size() * chunk_count);
  std::vector<int64_t> ids;
  std::vector<float> multipliers;
  ids.reserve(static_cast<size_t>(rows * length));
  multipliers.reserve(static_cast<size_t>(rows * length));
  bool weighted = false;
  const PromptChunk none;
  std::vector<TokenEmbeddingOverride> overrides;
  for (const auto& chunks : all) {
    for (size_t c = 0; c < chunk_count; ++c) {
      const PromptChunk& chunk = c < chunks.size() ? chunks[c] : none;
      const size_t start = ids.size();
      for (const auto& fix : chunk.fixes) {
        // After the start token; A1111's EmbeddingsWithFixes (offset + 1).
        const torch::Tensor& v = *vectors.at(static_cast<size_t>(fix.embedding));
        overrides.push_back({static_cast<int64_t>(start / static_cast<size_t>(length)),
                             static_cast<int64_t>(fix.offset) + 1, v.narrow(0, 0, fix.vectors)});
        if (used) used->push_back(fix.embedding);
      }
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
  const auto out = encoder->forward(input, clip_skip, norm, overrides);
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
  EmbeddingVectors vectors, vectors_2;
  for (const auto& e : embeddings_) {
    vectors.push_back(&e.embedding.vectors);
    vectors_2.push_back(&e.embedding.vectors_2);
  }
  std::vector<int> used;
  auto note_used = [&] {
    for (int i : used) {
      const std::string& name = embeddings_[static_cast<size_t>(i)].embedding.name;
      if (std::find(embeddings_used_.begin(), embeddings_used_.end(), name) ==
          embeddings_used_.end())
        embeddings_used_.push_back(name);
    }
  };
  if (!model_.is_sdxl()) {
    out.context = encode_with(*model_.tokenizer, text_encoder_, prompts, clip_skip,
                              HiddenNorm::final_layer_norm, chunk_count, long_prompt_,
                              model_.device, finder_for(embeddings_, false), vectors, &used)
                      .hidden.to(model_.dtype);
    note_used();
    return out;
  }
  const int layer = std::max(clip_skip, 2);
  const auto first =
      encode_with(*model_.tokenizer, text_encoder_, prompts, layer, HiddenNorm::none, chunk_count,
                  long_prompt_, model_.device, finder_for(embeddings_, false), vectors, &used);
  const auto second = encode_with(*model_.tokenizer_2, text_encoder_2_, prompts, layer,
                                  HiddenNorm::none, chunk_count, long_prompt_, model_.device,
                                  finder_for(embeddings_, true), vectors_2, nullptr);
  note_used();
  out.context = torch::cat({first.hidden, second.hidden}, -1).to(model_.dtype);
  out.pooled = second.pooled.to(model_.dtype);
  return out;
}

torch::Tensor Pipeline::encode_prompts(const std::vector<std::string>& prompts, int clip_skip,
                                       int min_chunks) {
  return encode_prompt_embeddings(prompts, clip_skip, min_chunks).context;
}

}  // namespace sdgen
