#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sdgen/error.h"
#include "sdgen/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using sdgen::CLIPTokenizer;
using sdgen::TokenizerConfig;

namespace {

std::vector<std::string> golden_prompts() {
  const auto meta = nlohmann::json::parse(sdgen::test::golden_meta());
  return meta.at("tokenizer_prompts").get<std::vector<std::string>>();
}

std::vector<int64_t> golden_tokens(int i) {
  torch::Tensor t = sdgen::test::golden("tokens." + std::to_string(i)).to(torch::kLong);
  t = t.reshape({-1}).contiguous();
  return {t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()};
}

void expect_golden_tokens(const CLIPTokenizer& tokenizer) {
  const auto prompts = golden_prompts();
  ASSERT_EQ(prompts.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    const auto expected = golden_tokens(i);
    ASSERT_EQ(expected.size(), 77u);
    EXPECT_EQ(tokenizer.encode_padded(prompts[i]), expected)
        << "tokens." << i << ": \"" << prompts[i] << "\"";
  }
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const sdgen::Error& e) {
    return e.what();
  }
  return "(no sdgen::Error thrown)";
}

}  // namespace

TEST(Tokenizer, GoldenTokensHFLayout) {
  SDGEN_REQUIRE_SHARED();
  auto tokenizer = CLIPTokenizer::from_path(sdgen::test::tiny_model_dir() + "/tokenizer", {});
  EXPECT_EQ(tokenizer->vocab_size(), 49408u);
  EXPECT_EQ(tokenizer->max_length(), 77);
  expect_golden_tokens(*tokenizer);
}

TEST(Tokenizer, GoldenTokensModelRootFindsTokenizerFolder) {
  SDGEN_REQUIRE_SHARED();
  auto tokenizer = CLIPTokenizer::from_path(sdgen::test::tiny_model_dir(), {});
  expect_golden_tokens(*tokenizer);
}

TEST(Tokenizer, GoldenTokensOpenAIGz) {
  SDGEN_REQUIRE_SHARED();
  auto tokenizer = CLIPTokenizer::from_bpe_gz(
      sdgen::test::clip_vocab_dir() + "/bpe_simple_vocab_16e6.txt.gz", {});
  expect_golden_tokens(*tokenizer);
  // from_path on the .gz file itself.
  auto again =
      CLIPTokenizer::from_path(sdgen::test::clip_vocab_dir() + "/bpe_simple_vocab_16e6.txt.gz", {});
  expect_golden_tokens(*again);
}

TEST(Tokenizer, GzVocabularyEqualsVocabJson) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = sdgen::test::clip_vocab_dir();
  auto gz = CLIPTokenizer::from_bpe_gz(dir + "/bpe_simple_vocab_16e6.txt.gz", {});
  std::ifstream in(dir + "/vocab.json");
  const auto vocab = nlohmann::json::parse(in);
  ASSERT_EQ(gz->vocab_size(), vocab.size());
  size_t mismatches = 0;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (gz->token_id(it.key()) != it.value().get<int64_t>()) ++mismatches;
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_EQ(gz->token_id("<|startoftext|>"), 49406);
  EXPECT_EQ(gz->token_id("<|endoftext|>"), 49407);
}

TEST(Tokenizer, NormalisationAndSplitting) {
  SDGEN_REQUIRE_SHARED();
  auto tok = CLIPTokenizer::from_path(sdgen::test::clip_vocab_dir(), {});
  // NFC: "e" + U+0301 composes to "é".
  EXPECT_EQ(tok->encode("cafe\xCC\x81"), tok->encode("caf\xC3\xA9"));
  // Upper case, including non-ASCII, is lowered.
  EXPECT_EQ(tok->encode("CAF\xC3\x89"), tok->encode("caf\xC3\xA9"));
  // Unicode whitespace (NBSP, ideographic space) separates words like a space.
  EXPECT_EQ(tok->encode("red\xC2\xA0"
                        "fox\xE3\x80\x80"
                        "x"),
            tok->encode("red fox x"));
  // Whitespace alone gives nothing; digits are split one by one.
  EXPECT_TRUE(tok->encode(" \t\n ").empty());
  EXPECT_EQ(tok->encode("42").size(), 2u);
  // "the" is one merged word token.
  EXPECT_EQ(tok->encode("the"), std::vector<int64_t>{tok->token_id("the</w>")});
  // Special tokens in the text stay single ids, only when written exactly.
  EXPECT_EQ(tok->encode("<|endoftext|>"), std::vector<int64_t>{49407});
  EXPECT_GT(tok->encode("<|ENDOFTEXT|>").size(), 1u);
}

TEST(Tokenizer, TruncationKeepsEosLast) {
  SDGEN_REQUIRE_SHARED();
  auto tok = CLIPTokenizer::from_path(sdgen::test::clip_vocab_dir(), {});
  std::string text;
  for (int i = 0; i < 100; ++i) text += "dog ";
  const auto ids = tok->encode_padded(text);
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids.front(), 49406);
  EXPECT_EQ(ids.back(), 49407);
  EXPECT_EQ(ids[75], tok->token_id("dog</w>"));
}

TEST(Tokenizer, Sd2PadToken) {
  SDGEN_REQUIRE_SHARED();
  const std::string dir = sdgen::test::clip_vocab_dir();
  TokenizerConfig config;
  config.pad_token = "!";
  auto tok = CLIPTokenizer::from_files(dir + "/vocab.json", dir + "/merges.txt", config);
  const auto ids = tok->encode_padded("a dog");
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids[3], 49407);  // eos
  EXPECT_EQ(ids[4], 0);      // pad "!"
  EXPECT_EQ(ids[76], 0);
  // transformers registers the pad token as a special added token, so a "!"
  // in the prompt becomes id 0 instead of the word-end "!</w>" (256).
  EXPECT_EQ(tok->encode("dog!"), (std::vector<int64_t>{tok->token_id("dog</w>"), 0}));
}

TEST(Tokenizer, MinimalVocabRoundTrips) {
  const std::string dir = sdgen::test::temp_dir("minimal-vocab");
  CLIPTokenizer::write_minimal_vocab(dir);
  EXPECT_TRUE(fs::exists(dir + "/vocab.json"));
  EXPECT_TRUE(fs::exists(dir + "/merges.txt"));
  EXPECT_TRUE(fs::exists(dir + "/tokenizer_config.json"));
  auto tok = CLIPTokenizer::from_path(dir, {});
  EXPECT_EQ(tok->vocab_size(), 256u * 2 + 7 + 2);
  const int64_t bos = tok->token_id("<|startoftext|>"), eos = tok->token_id("<|endoftext|>");
  for (const std::string text :
       {"a photograph of an astronaut riding a horse", "", "The END!! \xF0\x9F\x99\x82 1234",
        "caf\xC3\xA9 \xE6\x9D\xB1\xE4\xBA\xAC"}) {
    const auto ids = tok->encode_padded(text);
    ASSERT_EQ(ids.size(), 77u);
    EXPECT_EQ(ids.front(), bos);
    for (int64_t id : ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, static_cast<int64_t>(tok->vocab_size()));
    }
    EXPECT_EQ(ids.back(), eos);  // padded with eos
  }
  // Merges apply: "the" is one token; unmerged text falls back to byte symbols.
  EXPECT_EQ(tok->encode("the").size(), 1u);
  EXPECT_EQ(tok->encode("xyz"),
            (std::vector<int64_t>{tok->token_id("x"), tok->token_id("y"), tok->token_id("z</w>")}));
}

TEST(Tokenizer, MissingFilesNameThePath) {
  const std::string dir = sdgen::test::temp_dir("no-vocab");
  std::string msg = message_of([&] { CLIPTokenizer::from_path(dir, {}); });
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bpe_simple_vocab_16e6.txt.gz"), std::string::npos) << msg;

  msg = message_of([&] { CLIPTokenizer::from_path(dir + "/nowhere", {}); });
  EXPECT_NE(msg.find(dir + "/nowhere"), std::string::npos) << msg;

  msg =
      message_of([&] { CLIPTokenizer::from_files(dir + "/vocab.json", dir + "/merges.txt", {}); });
  EXPECT_NE(msg.find(dir + "/vocab.json"), std::string::npos) << msg;

  msg = message_of([&] { CLIPTokenizer::from_bpe_gz(dir + "/x.txt.gz", {}); });
  EXPECT_NE(msg.find(dir + "/x.txt.gz"), std::string::npos) << msg;

  // A plain (not gzip) file given as the .gz, and a corrupt merges file.
  { std::ofstream(dir + "/bad.gz") << ""; }
  EXPECT_THROW(CLIPTokenizer::from_bpe_gz(dir + "/bad.gz", {}), sdgen::Error);
  CLIPTokenizer::write_minimal_vocab(dir + "/m");
  { std::ofstream(dir + "/m/merges.txt", std::ios::app) << "one two three\n"; }
  msg = message_of([&] { CLIPTokenizer::from_path(dir + "/m", {}); });
  EXPECT_NE(msg.find("merges.txt:9"), std::string::npos) << msg;
  // A vocabulary without the special tokens, and an unknown token name.
  EXPECT_THROW(CLIPTokenizer({{"a", 0}}, {}, TokenizerConfig{}), sdgen::Error);
  CLIPTokenizer::write_minimal_vocab(dir + "/m2");
  auto tok = CLIPTokenizer::from_path(dir + "/m2", {});
  msg = message_of([&] { tok->token_id("no-such-token"); });
  EXPECT_NE(msg.find("no-such-token"), std::string::npos) << msg;
}

TEST(Tokenizer, InvalidUtf8NeverCrashes) {
  const std::string dir = sdgen::test::temp_dir("utf8-vocab");
  CLIPTokenizer::write_minimal_vocab(dir);
  auto tok = CLIPTokenizer::from_path(dir, {});
  // An invalid byte is read as U+FFFD (EF BF BD), as Python's errors="replace" does.
  EXPECT_EQ(tok->encode("\xFF"), tok->encode("\xEF\xBF\xBD"));
  EXPECT_EQ(tok->encode("a\xC3"), tok->encode("a\xEF\xBF\xBD"));
  EXPECT_EQ(tok->encode("\xED\xA0\x80"), tok->encode("\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"));
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> byte(0, 255), length(0, 64);
  for (int round = 0; round < 2000; ++round) {
    std::string text(static_cast<size_t>(length(rng)), '\0');
    for (char& c : text) c = static_cast<char>(byte(rng));
    std::vector<int64_t> ids;
    ASSERT_NO_THROW(ids = tok->encode_padded(text));
    ASSERT_EQ(ids.size(), 77u);
    for (int64_t id : ids) ASSERT_TRUE(id >= 0 && id < static_cast<int64_t>(tok->vocab_size()));
  }
}
