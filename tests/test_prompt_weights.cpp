// A1111 prompt syntax: the emphasis parser against A1111's own examples, the
// 75-token chunking, and Pipeline::encode_prompts on the tiny model (plain
// prompts equal diffusers' golden embeddings exactly).

#include <chrono>
#include <cmath>

#include "sdgen/prompt_weights.h"
#include "test_util.h"

namespace sdgen {
namespace {

using Runs = std::vector<std::pair<std::string, double>>;

Runs runs(const std::vector<WeightedText>& parsed) {
  Runs out;
  for (const auto& w : parsed) out.emplace_back(w.is_break ? "BREAK" : w.text, w.weight);
  return out;
}

struct ParseCase {
  std::string prompt;
  Runs expected;
};

TEST(PromptWeights, A1111Examples) {
  // The first six are the doctests of A1111 prompt_parser.parse_prompt_attention.
  const std::vector<ParseCase> cases = {
      {"normal text", {{"normal text", 1.0}}},
      {"an (important) word", {{"an ", 1.0}, {"important", 1.1}, {" word", 1.0}}},
      {"(unbalanced", {{"unbalanced", 1.1}}},
      {"\\(literal\\]", {{"(literal]", 1.0}}},
      {"(unnecessary)(parens)", {{"unnecessaryparens", 1.1}}},
      {"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
       {{"a ", 1.0},
        {"house", 1.5730000000000004},
        {" ", 1.1},
        {"on", 1.0},
        {" a ", 1.1},
        {"hill", 0.55},
        {", sun, ", 1.1},
        {"sky", 1.4641000000000006},
        {".", 1.1}}},
      {"((word))", {{"word", 1.1 * 1.1}}},
      {"[word]", {{"word", 1 / 1.1}}},
      {"[[word]]", {{"word", (1 / 1.1) * (1 / 1.1)}}},
      {"(word:1.5)", {{"word", 1.5}}},
      {"(word: 1.5 )", {{"word", 1.5}}},
      {"(word:-0.5) x", {{"word", -0.5}, {" x", 1.0}}},
      {"a (b:0) c", {{"a ", 1.0}, {"b", 0.0}, {" c", 1.0}}},
      {"x:1.5) y", {{"x:1.5) y", 1.0}}},  // a weight without '(' is text
      {"(a:1.5", {{"a:1.5", 1.1}}},       // no ')' after the number: ':' is text
      {"(a:1.2.3)", {{"a:1.2.3", 1.1}}},  // not a number: text (A1111 would raise)
      {"ratio 16:9", {{"ratio 16:9", 1.0}}},
      {"a \\\\ b", {{"a \\ b", 1.0}}},
      {"a \\ b", {{"a  b", 1.0}}},  // a lone backslash is dropped, as in A1111
      {"close) and ]", {{"close) and ]", 1.0}}},
      {"", {{"", 1.0}}},
      {"a BREAK b", {{"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0}}},
      {"aBREAK b BREAKS", {{"aBREAK b BREAKS", 1.0}}},
      {"(x BREAK y)", {{"x", 1.1}, {"BREAK", -1.0}, {"y", 1.1}}},
      {"[a (b)]", {{"a ", 1 / 1.1}, {"b", 1.1 / 1.1}}},
  };
  for (const auto& c : cases) {
    const auto got = runs(parse_prompt_attention(c.prompt));
    ASSERT_EQ(got.size(), c.expected.size()) << "'" << c.prompt << "'";
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].first, c.expected[i].first) << "'" << c.prompt << "' run " << i;
      EXPECT_DOUBLE_EQ(got[i].second, c.expected[i].second) << "'" << c.prompt << "' run " << i;
    }
  }
  EXPECT_TRUE(parse_prompt_attention("a (b) c").size() == 3);
  EXPECT_TRUE(is_plain_prompt(parse_prompt_attention("a photo, 8k: sharp")));
  EXPECT_FALSE(is_plain_prompt(parse_prompt_attention("a (photo)")));
  EXPECT_FALSE(is_plain_prompt(parse_prompt_attention("a BREAK b")));
}

// One id per space-separated word, 999 for ",".
std::vector<int64_t> fake_tokenize(const std::string& text) {
  std::vector<int64_t> ids;
  std::string word;
  auto flush = [&]() {
    if (!word.empty()) ids.push_back(static_cast<int64_t>(word.size() * 10 + (word[0] % 7)));
    word.clear();
  };
  for (const char c : text) {
    if (c == ' ') {
      flush();
    } else if (c == ',') {
      flush();
      ids.push_back(999);
    } else {
      word += c;
    }
  }
  flush();
  return ids;
}

std::string words(int n, const std::string& w = "w") {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " " : "") + w;
  return s;
}

TEST(PromptWeights, ChunksOf75WithCommaBacktrack) {
  ChunkingOptions options;
  options.comma_token = 999;
  auto chunk_sizes = [&](const std::string& prompt) {
    std::vector<size_t> sizes;
    for (const auto& c :
         split_prompt_chunks(parse_prompt_attention(prompt), fake_tokenize, options))
      sizes.push_back(c.tokens.size());
    return sizes;
  };
  EXPECT_EQ(chunk_sizes(""), std::vector<size_t>({0}));
  EXPECT_EQ(chunk_sizes(words(75)), std::vector<size_t>({75}));
  EXPECT_EQ(chunk_sizes(words(76)), std::vector<size_t>({75, 1}));
  EXPECT_EQ(chunk_sizes(words(160)), std::vector<size_t>({75, 75, 10}));
  // 70 words, a comma, 10 words: the chunk is cut after the comma (71 tokens).
  EXPECT_EQ(chunk_sizes(words(70) + ", " + words(10)), std::vector<size_t>({71, 10}));
  // A comma further back than 20 tokens does not move anything.
  EXPECT_EQ(chunk_sizes(words(40) + ", " + words(40)), std::vector<size_t>({75, 6}));
  options.comma_backtrack = 0;
  EXPECT_EQ(chunk_sizes(words(70) + ", " + words(10)), std::vector<size_t>({75, 6}));
  options.comma_backtrack = 20;
  // BREAK closes a chunk; BREAK at a chunk end gives no empty chunk after it.
  EXPECT_EQ(chunk_sizes("a b BREAK c"), std::vector<size_t>({2, 1}));
  EXPECT_EQ(chunk_sizes("a BREAK BREAK c"), std::vector<size_t>({1, 0, 1}));
  EXPECT_EQ(chunk_sizes("a BREAK"), std::vector<size_t>({1}));

  const auto weighted =
      split_prompt_chunks(parse_prompt_attention("a (b c:1.5) [d]"), fake_tokenize, options);
  ASSERT_EQ(weighted.size(), 1u);
  ASSERT_EQ(weighted[0].multipliers.size(), 4u);
  EXPECT_DOUBLE_EQ(weighted[0].multipliers[0], 1.0);
  EXPECT_DOUBLE_EQ(weighted[0].multipliers[1], 1.5);
  EXPECT_DOUBLE_EQ(weighted[0].multipliers[2], 1.5);
  EXPECT_DOUBLE_EQ(weighted[0].multipliers[3], 1 / 1.1);

  const auto truncated = truncate_prompt_chunks(parse_prompt_attention(words(100) + " BREAK x"),
                                                fake_tokenize, options);
  ASSERT_EQ(truncated.size(), 1u);
  EXPECT_EQ(truncated[0].tokens.size(), 75u);
}

const char* kLongPrompt =
    "photo of a very long prompt about a red fox in the snowy forest at dawn photo of a very "
    "long prompt about a red fox in the snowy forest at dawn photo of a very long prompt about a "
    "red fox in the snowy forest at dawn photo of a very long prompt about a red fox in the snowy "
    "forest at dawn photo of a very long prompt about a red fox in the snowy forest at dawn "
    "photo of a very long prompt about a red fox in the snowy forest at dawn";

// What encode_prompts did before prompt syntax existed: tokenizer(padding=
// "max_length", truncation) + the text encoder, diffusers' encode_prompt.
torch::Tensor diffusers_encoding(const std::string& prompt, int clip_skip) {
  torch::NoGradGuard no_grad;
  auto& model = test::tiny_model();
  const auto ids = model.tokenizer->encode_padded(prompt);
  auto input = torch::tensor(ids, torch::kInt64).view({1, -1});
  return model.text_encoder->forward(input, clip_skip).hidden;
}

// Textual inversion (A1111 tokenize_line): an embedding's name becomes its
// vectors' placeholder tokens and a fix; one that does not fit starts a new
// chunk; a comma cut moves it with its tokens; truncation cuts its vectors.
TEST(PromptWeights, EmbeddingsTakeTheirVectorsPlaces) {
  ChunkingOptions options;
  options.comma_token = 999;
  options.placeholder_token = -7;
  const int64_t name = fake_tokenize("emb")[0];  // a one-token name with 3 vectors
  options.find_embedding = [name](const std::vector<int64_t>& tokens, size_t position) {
    return tokens[position] == name ? EmbeddingMatch{4, 3, 1} : EmbeddingMatch{};
  };
  auto chunks =
      split_prompt_chunks(parse_prompt_attention("a (emb:1.5) b"), fake_tokenize, options);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].tokens.size(), 5u);
  EXPECT_EQ(chunks[0].fixes, (std::vector<ChunkFix>{{1, 4, 3}}));
  EXPECT_EQ(chunks[0].tokens[1], -7);
  EXPECT_EQ(chunks[0].multipliers[3], 1.5);
  // 73 words: 3 vectors do not fit, they start the next chunk.
  chunks = split_prompt_chunks(parse_prompt_attention(words(73) + " emb"), fake_tokenize, options);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].tokens.size(), 73u);
  EXPECT_TRUE(chunks[0].fixes.empty());
  EXPECT_EQ(chunks[1].fixes, (std::vector<ChunkFix>{{0, 4, 3}}));
  // A comma cut moves the embedding with its tokens.
  chunks = split_prompt_chunks(parse_prompt_attention(words(66) + ", emb " + words(10)),
                               fake_tokenize, options);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].tokens.size(), 67u);
  EXPECT_EQ(chunks[1].fixes, (std::vector<ChunkFix>{{0, 4, 3}}));
  // diffusers' truncation: the vectors that fit.
  const auto cut =
      truncate_prompt_chunks(parse_prompt_attention(words(73) + " emb"), fake_tokenize, options);
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].tokens.size(), 75u);
  EXPECT_EQ(cut[0].fixes, (std::vector<ChunkFix>{{73, 4, 2}}));
}

TEST(PromptEncoding, PlainPromptsEqualDiffusersExactly) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  const std::string astronaut = "a photograph of an astronaut riding a horse";
  for (int clip_skip : {1, 2}) {
    const auto z = pipeline.encode_prompts({astronaut}, clip_skip);
    ASSERT_EQ(z.sizes(), torch::IntArrayRef({1, 77, 32}));
    EXPECT_EQ(test::max_abs_diff(z, diffusers_encoding(astronaut, clip_skip)), 0.0);
  }
  const double golden_diff =
      test::max_abs_diff(pipeline.encode_prompts({astronaut}, 1), test::golden("text.0.last"));
  std::cout << "[encode] plain prompt vs golden text.0.last: " << golden_diff << std::endl;
  EXPECT_LT(golden_diff, 1e-5);
  EXPECT_EQ(test::max_abs_diff(pipeline.encode_prompts({""}, 1), diffusers_encoding("", 1)), 0.0);
  // Text with ':' but no emphasis is plain too.
  const std::string colon = "ratio 16:9, a photo";
  EXPECT_EQ(test::max_abs_diff(pipeline.encode_prompts({colon}, 1), diffusers_encoding(colon, 1)),
            0.0);

  // diffusers truncates; A1111 chunks, and its first chunk is the truncation
  // (no comma near the cut).
  pipeline.set_long_prompt(Pipeline::LongPrompt::truncate);
  EXPECT_EQ(pipeline.prompt_chunk_count(kLongPrompt), 1);
  EXPECT_EQ(test::max_abs_diff(pipeline.encode_prompts({kLongPrompt}, 1),
                               diffusers_encoding(kLongPrompt, 1)),
            0.0);
  pipeline.set_long_prompt(Pipeline::LongPrompt::chunks);
  EXPECT_EQ(pipeline.prompt_chunk_count(kLongPrompt), 2);
  const auto chunked = pipeline.encode_prompts({kLongPrompt}, 1);
  ASSERT_EQ(chunked.sizes(), torch::IntArrayRef({1, 154, 32}));
  // Both chunks run as one batch of 2, so only float rounding differs.
  EXPECT_LT(test::max_abs_diff(chunked.slice(1, 0, 77), diffusers_encoding(kLongPrompt, 1)), 1e-5);
  EXPECT_LT(test::max_abs_diff(chunked.slice(1, 0, 77), test::golden("text.6.last")), 1e-5);
}

TEST(PromptEncoding, EmphasisScalesTokensAndRestoresTheMean) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  const auto plain = pipeline.encode_prompts({"a red fox"}, 1);
  const auto weighted = pipeline.encode_prompts({"a (red:1.5) fox"}, 1);
  // "a", "red", "fox" are one token each here: position 2 is "red".
  auto m = torch::ones({1, 77, 1});
  m[0][2][0] = 1.5;
  auto expected = plain * m;
  expected = expected * (plain.mean() / expected.mean());
  const double diff = test::max_abs_diff(weighted, expected);
  std::cout << "[emphasis] max abs difference from A1111's formula: " << diff << std::endl;
  EXPECT_LT(diff, 1e-6);
  EXPECT_NEAR(weighted.mean().item<double>(), plain.mean().item<double>(), 1e-7);
  EXPECT_GT(test::max_abs_diff(weighted, plain), 1e-3);
}

TEST(PromptEncoding, PromptsPaddedToTheSameChunkCount) {
  SDGEN_REQUIRE_SHARED();
  Pipeline pipeline(test::tiny_model());
  const auto both = pipeline.encode_prompts({kLongPrompt, ""}, 1);
  ASSERT_EQ(both.sizes(), torch::IntArrayRef({2, 154, 32}));
  const auto empty = pipeline.encode_prompts({""}, 1);
  // The short prompt gets an empty chunk: the encoding of "" again.
  EXPECT_LT(test::max_abs_diff(both[1].slice(0, 77, 154), empty[0]), 1e-6);
  EXPECT_LT(test::max_abs_diff(both[1].slice(0, 0, 77), empty[0]), 1e-6);
  EXPECT_EQ(pipeline.encode_prompts({""}, 1, 3).size(1), 231);
  // BREAK: two chunks, the second starting with "b".
  EXPECT_EQ(pipeline.prompt_chunk_count("a BREAK b"), 2);
  const auto broken = pipeline.encode_prompts({"a BREAK b"}, 1);
  EXPECT_LT(test::max_abs_diff(broken.slice(1, 0, 77), pipeline.encode_prompts({"a"}, 1)), 1e-6);
  EXPECT_LT(test::max_abs_diff(broken.slice(1, 77, 154), pipeline.encode_prompts({"b"}, 1)), 1e-6);
}

// Found while fuzzing (fuzz_prompt_weights slowed to ~160 inputs/s on 2 KB
// inputs): merging runs of equal weight erased from the middle of a vector,
// quadratic in the number of runs, and every ':' or escape makes a run. A
// 160 KB "a:a:a:..." prompt took a minute, 10 MB would take days. The bound
// below only guards against that coming back (it was minutes); it is not a
// benchmark.
TEST(PromptWeights, ManyRunsMergeInLinearTime) {
  std::string prompt;
  for (int i = 0; i < 200000; ++i) prompt += i % 1000 == 999 ? "\\(" : "a:";
  const auto start = std::chrono::steady_clock::now();
  const auto parsed = parse_prompt_attention(prompt);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_EQ(parsed[0].weight, 1.0);
  EXPECT_EQ(parsed[0].text.size(), prompt.size() - 200);  // each "\\(" gives "("
  EXPECT_LT(seconds, 20.0);
  // Merging still joins only neighbours of equal weight, as A1111 does.
  const auto mixed = parse_prompt_attention("a:b (c:d) e BREAK BREAK f [g]");
  const std::vector<std::string> texts = {"a:b ", "c:d", " e", "BREAK", "", "BREAK", "f ", "g"};
  ASSERT_EQ(mixed.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(mixed[i].text, texts[i]) << i;
  EXPECT_NEAR(mixed[1].weight, 1.1, 1e-12);
  EXPECT_TRUE(mixed[3].is_break && mixed[5].is_break);
  EXPECT_NEAR(mixed[7].weight, 1 / 1.1, 1e-12);
}

}  // namespace
}  // namespace sdgen
