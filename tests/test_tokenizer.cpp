#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
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

// ---- SentencePieceTokenizer (issue 8: the tokenizer of the models sdgen trains) ----
// Models are trained with sdgen-spm (tools/spm), which links sentencepiece
// (this process cannot: tokenizer.h); its `encode` is the reference for the
// native reader.

namespace {

// 200 captions of the kind the issue-8 model is trained on.
std::vector<std::string> caption_corpus() {
  const char* colours[] = {"red", "green", "blue", "yellow", "purple", "orange"};
  const char* shapes[] = {"circle", "square", "triangle", "star"};
  const char* relations[] = {"above", "below", "left of", "right of"};
  const char* sizes[] = {"small", "large"};
  std::vector<std::string> out;
  for (int i = 0; i < 200; ++i) {
    out.push_back(std::string("a ") + sizes[i % 2] + " " + colours[i % 6] + " " +
                  shapes[(i / 6) % 4] + " " + relations[(i / 24) % 4] + " a " +
                  colours[(i / 3 + 1) % 6] + " " + shapes[(i / 2 + 1) % 4] +
                  " on a white background");
  }
  return out;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::ofstream out(path, std::ios::binary);
  for (const auto& line : lines) out << line << '\n';
}

std::string spm_binary() { return sdgen::test::binary_dir() + "/sdgen-spm"; }

// Trains with sdgen-spm into `dir`; returns its exit status (output in *log).
int train_spm(const std::vector<std::string>& sentences, const std::string& dir, int vocab_size,
              int max_length, std::string* log = nullptr) {
  const std::string input = dir + ".txt";
  write_lines(input, sentences);
  return sdgen::test::run(spm_binary() + " train --input '" + input + "' --out '" + dir +
                              "' --vocab-size " + std::to_string(vocab_size) + " --max-length " +
                              std::to_string(max_length),
                          log);
}

// sentencepiece's own ids for each line (sdgen-spm encode).
std::vector<std::vector<int64_t>> reference_ids(const std::string& model,
                                                const std::vector<std::string>& lines) {
  const std::string dir = sdgen::test::temp_dir("spm-encode");
  write_lines(dir + "/in.txt", lines);
  std::string log;
  const int rc = sdgen::test::run(spm_binary() + " encode --model '" + model + "' < '" + dir +
                                      "/in.txt' > '" + dir + "/out.txt'",
                                  &log);
  EXPECT_EQ(rc, 0) << log;
  std::vector<std::vector<int64_t>> out;
  std::ifstream in(dir + "/out.txt");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::vector<int64_t> ids;
    for (int64_t id = 0; words >> id;) ids.push_back(id);
    out.push_back(ids);
  }
  return out;
}

// One trained folder per process (vocabulary 200, max length 32), shared by the tests below.
const std::string& trained_dir() {
  static const std::string dir = [] {
    const std::string d = sdgen::test::temp_dir("spiece") + "/tokenizer";
    std::string log;
    if (train_spm(caption_corpus(), d, 200, 32, &log) != 0)
      ADD_FAILURE() << "sdgen-spm train failed: " << log;
    return d;
  }();
  return dir;
}

std::unique_ptr<sdgen::SentencePieceTokenizer> trained_tokenizer() {
  return sdgen::SentencePieceTokenizer::from_file(trained_dir() + "/spiece.model", {});
}

// Strings that exercise the normaliser and the merges: captions in other
// cases and spacings, unknown characters, invalid UTF-8, control bytes.
std::vector<std::string> parity_strings() {
  std::vector<std::string> out = caption_corpus();
  out.insert(out.end(), {"",
                         " ",
                         "   ",
                         "A",
                         "RED",
                         "Red Circle",
                         "  a  small\tred   circle  ",
                         "\ta\vb\fc\rd",
                         "<s></s><pad><unk>",
                         "\xE2\x96\x81red",
                         "x\xE2\x96\x81",
                         "zebra",
                         "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC",
                         "\xFF\xFE red \xC3",
                         "\xED\xA0\x80",
                         "\xEF\xBF\xBD\xEF\xBF\xBD",
                         "\xF4\x90\x80\x80",
                         "\xC0\xAF",
                         "\xE0\x80\xAF",
                         "\xF0\x9F\x98\x80 star",
                         "red,blue;green!",
                         "12 circles",
                         std::string("a\0b", 3),
                         "squaresquare",
                         "rred ccircle"});
  std::mt19937 rng(99);
  const std::string alphabet = "abcdefghilnoprstuvwyz  ABCRS";
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  std::uniform_int_distribution<int> length(0, 40), byte(0, 255);
  for (int i = 0; i < 300; ++i) {
    std::string text(static_cast<size_t>(length(rng)), ' ');
    for (char& c : text) c = alphabet[pick(rng)];
    out.push_back(text);
  }
  for (int i = 0; i < 300; ++i) {
    std::string text(static_cast<size_t>(length(rng)), ' ');
    for (char& c : text) {
      do c = static_cast<char>(byte(rng));
      while (c == '\n');  // one string per line for sdgen-spm
    }
    out.push_back(text);
  }
  return out;
}

}  // namespace

TEST(SentencePieceTokenizer, TrainingWritesDeterministicFiles) {
  const std::string other = sdgen::test::temp_dir("spiece-again") + "/tokenizer";
  std::string log;
  ASSERT_EQ(train_spm(caption_corpus(), other, 200, 32, &log), 0) << log;
  const std::string model = file_bytes(trained_dir() + "/spiece.model");
  ASSERT_FALSE(model.empty());
  EXPECT_LT(model.size(), 300u * 1024);
  EXPECT_TRUE(model == file_bytes(other + "/spiece.model")) << "two trainings differ";
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(other))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"special_tokens_map.json", "spiece.model",
                                             "tokenizer_config.json"}));
  const auto config = sdgen::read_json_file(other + "/tokenizer_config.json");
  EXPECT_EQ(config.at("tokenizer_class"), "sdgen.SentencePieceTokenizer");
  EXPECT_EQ(config.at("bos_token"), "<s>");
  EXPECT_EQ(config.at("eos_token"), "</s>");
  EXPECT_EQ(config.at("pad_token"), "<pad>");
  EXPECT_EQ(config.at("unk_token"), "<unk>");
  EXPECT_EQ(config.at("do_lower_case"), true);
  EXPECT_EQ(config.at("model_max_length"), 32);
  const auto special = sdgen::read_json_file(other + "/special_tokens_map.json");
  EXPECT_EQ(special.at("eos_token"), "</s>");
  EXPECT_EQ(special.at("pad_token"), "<pad>");
}

TEST(SentencePieceTokenizer, TrainingErrorsAreOneLine) {
  const std::string dir = sdgen::test::temp_dir("spiece-train-bad");
  std::string log;
  EXPECT_EQ(train_spm({}, dir + "/a", 100, 32, &log), 1) << log;
  EXPECT_NE(log.find("sdgen-spm: error: "), std::string::npos) << log;
  EXPECT_EQ(train_spm({"", "   "}, dir + "/b", 100, 32, &log), 1) << log;
  // Fewer pieces than the corpus has characters.
  EXPECT_EQ(train_spm(caption_corpus(), dir + "/c", 10, 32, &log), 1) << log;
  EXPECT_NE(log.find("sdgen-spm: error: training failed"), std::string::npos) << log;
  EXPECT_EQ(train_spm(caption_corpus(), dir + "/d", 200, 1, &log), 2) << log;
  EXPECT_EQ(sdgen::test::run(spm_binary() + " train --input '" + dir + "/none.txt' --out '" + dir +
                                 "/e' --vocab-size 100 --max-length 32",
                             &log),
            1);
  EXPECT_NE(log.find(dir + "/none.txt"), std::string::npos) << log;
}

// The native reader gives sentencepiece's ids exactly.
TEST(SentencePieceTokenizer, NativeEncoderMatchesSentencepiece) {
  const auto strings = parity_strings();
  // The caption model, and a larger vocabulary over more varied text.
  std::vector<std::string> richer = caption_corpus();
  for (int i = 0; i < 100; ++i)
    richer.push_back("Caf\xC3\xA9 #" + std::to_string(i * 37) + ": the " +
                     (i % 2 ? "QUICK" : "quick") + " brown fox, \xE6\x97\xA5\xE6\x9C\xAC " +
                     "jumps over the lazy dog's back.");
  const std::string rich_dir = sdgen::test::temp_dir("spiece-rich") + "/tokenizer";
  std::string log;
  ASSERT_EQ(train_spm(richer, rich_dir, 400, 77, &log), 0) << log;
  for (const std::string& dir : {trained_dir(), rich_dir}) {
    const auto tok = sdgen::SentencePieceTokenizer::from_file(dir + "/spiece.model", {});
    const auto expected = reference_ids(dir + "/spiece.model", strings);
    ASSERT_EQ(expected.size(), strings.size());
    int mismatches = 0;
    for (size_t i = 0; i < strings.size() && mismatches < 10; ++i) {
      const auto ids = tok->encode(strings[i]);
      if (ids != expected[i]) {
        ++mismatches;
        ADD_FAILURE() << dir << ": string " << i << " \"" << strings[i]
                      << "\": " << ::testing::PrintToString(ids) << " != sentencepiece "
                      << ::testing::PrintToString(expected[i]);
      }
    }
  }
}

TEST(SentencePieceTokenizer, SpecialIdsAndPaddedLayout) {
  auto tok = trained_tokenizer();
  EXPECT_EQ(tok->pad_id(), 0);
  EXPECT_EQ(tok->unk_id(), 1);
  EXPECT_EQ(tok->bos_id(), 2);
  EXPECT_EQ(tok->eos_id(), 3);
  EXPECT_EQ(tok->max_length(), 32);  // from tokenizer_config.json, not the default 77
  EXPECT_LE(tok->vocab_size(), 200u);

  const std::string text = "a small red circle above a blue square";
  const auto ids = tok->encode(text);
  // BPE learns the corpus' words: one piece per word.
  EXPECT_EQ(ids.size(), 8u);
  for (int64_t id : ids) {
    EXPECT_GE(id, 4);  // no special or unknown piece
    EXPECT_LT(id, static_cast<int64_t>(tok->vocab_size()));
  }
  const auto padded = tok->encode_padded(text);
  ASSERT_EQ(padded.size(), 32u);
  EXPECT_EQ(padded[0], 2);
  EXPECT_EQ(std::vector<int64_t>(padded.begin() + 1, padded.begin() + 9), ids);
  EXPECT_EQ(padded[9], 3);
  for (size_t i = 10; i < padded.size(); ++i) EXPECT_EQ(padded[i], 0) << i;

  // Truncation keeps eos last.
  std::string long_text;
  for (int i = 0; i < 10; ++i) long_text += text + " ";
  const auto long_ids = tok->encode(long_text);
  ASSERT_GT(long_ids.size(), 30u);
  const auto truncated = tok->encode_padded(long_text);
  ASSERT_EQ(truncated.size(), 32u);
  EXPECT_EQ(truncated.front(), 2);
  EXPECT_EQ(truncated.back(), 3);
  EXPECT_EQ(std::vector<int64_t>(truncated.begin() + 1, truncated.end() - 1),
            std::vector<int64_t>(long_ids.begin(), long_ids.begin() + 30));

  // A tokenizer_config.json beside the model wins over the config passed in.
  TokenizerConfig config;
  config.model_max_length = 77;
  EXPECT_EQ(sdgen::SentencePieceTokenizer::from_file(trained_dir() + "/spiece.model", config)
                ->max_length(),
            32);
  // Without one: the config's tokens when the model has them, else the model's own ids.
  const std::string bare = sdgen::test::temp_dir("spiece-bare");
  fs::copy_file(trained_dir() + "/spiece.model", bare + "/spiece.model");
  config.pad_token = "</s>";
  auto plain = sdgen::SentencePieceTokenizer::from_file(bare + "/spiece.model", config);
  EXPECT_EQ(plain->max_length(), 77);
  EXPECT_EQ(plain->bos_id(), 2);  // "<|startoftext|>" is not a piece: the model's <s>
  EXPECT_EQ(plain->pad_id(), 3);
  EXPECT_NE(plain->encode("Red"), plain->encode("red"));  // no do_lower_case
}

TEST(SentencePieceTokenizer, CaseFoldingAndDecode) {
  auto tok = trained_tokenizer();
  EXPECT_EQ(tok->encode("A Small RED Circle"), tok->encode("a small red circle"));
  EXPECT_EQ(tok->encode("  a \t small\nred  circle "), tok->encode("a small red circle"));
  const std::string text = "a large purple star left of a green triangle";
  EXPECT_EQ(tok->decode(tok->encode(text)), text);
  EXPECT_EQ(tok->decode(tok->encode_padded(text)), text);  // bos/eos/pad dropped
  EXPECT_EQ(tok->decode(tok->encode("Red STAR")), "red star");
  EXPECT_THROW(tok->decode({100000}), sdgen::Error);
  EXPECT_THROW(tok->decode({-1}), sdgen::Error);
  // Unknown characters become the unk id (a run of them one id), never an error.
  const auto checks = tok->encode("\xE2\x9C\x93\xE2\x9C\x93");  // "\u2581" + two unknowns
  ASSERT_EQ(checks.size(), 2u);
  EXPECT_EQ(checks[1], tok->unk_id());
  const auto unknown = tok->encode("zebra \xE2\x9C\x93");
  EXPECT_NE(std::find(unknown.begin(), unknown.end(), tok->unk_id()), unknown.end());
}

TEST(SentencePieceTokenizer, EmptyAndInvalidUtf8NeverCrash) {
  auto tok = trained_tokenizer();
  EXPECT_TRUE(tok->encode("").empty());
  EXPECT_TRUE(tok->encode("   ").empty());
  std::vector<int64_t> empty(32, 0);
  empty[0] = 2;
  empty[1] = 3;
  EXPECT_EQ(tok->encode_padded(""), empty);
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int> byte(0, 255), length(0, 200);
  for (int round = 0; round < 2000; ++round) {
    std::string text(static_cast<size_t>(length(rng)), '\0');
    for (char& c : text) c = static_cast<char>(byte(rng));
    std::vector<int64_t> ids;
    ASSERT_NO_THROW(ids = tok->encode_padded(text));
    ASSERT_EQ(ids.size(), 32u);
    ASSERT_EQ(ids[0], 2);
    ASSERT_NE(std::find(ids.begin(), ids.end(), 3), ids.end());
    for (int64_t id : ids) ASSERT_TRUE(id >= 0 && id < static_cast<int64_t>(tok->vocab_size()));
  }
}

TEST(SentencePieceTokenizer, BadFilesNameThePath) {
  const std::string dir = sdgen::test::temp_dir("spiece-bad");
  auto message_for = [&](const std::string& file) {
    return message_of([&] { sdgen::SentencePieceTokenizer::from_file(file, {}); });
  };
  std::string msg = message_for(dir + "/none.model");
  EXPECT_NE(msg.find(dir + "/none.model"), std::string::npos) << msg;
  { std::ofstream(dir + "/garbage.model") << "this is not a sentencepiece model\n\x01\x02\xFF"; }
  msg = message_for(dir + "/garbage.model");
  EXPECT_NE(msg.find(dir + "/garbage.model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not a valid SentencePiece model"), std::string::npos) << msg;
  { std::ofstream(dir + "/empty.model") << ""; }
  msg = message_for(dir + "/empty.model");
  EXPECT_NE(msg.find(dir + "/empty.model"), std::string::npos) << msg;
  // Every truncation of a real model is refused or loads; none crashes.
  const std::string model = file_bytes(trained_dir() + "/spiece.model");
  for (size_t cut = 0; cut < model.size(); cut += 7) {
    try {
      sdgen::SentencePieceTokenizer::from_bytes(model.substr(0, cut), {}, true, "cut")
          ->encode_padded("a red circle");
    } catch (const sdgen::Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("cut: ", 0), 0u) << e.what();
    }
  }
  { std::ofstream(dir + "/cut.model", std::ios::binary) << model.substr(0, model.size() / 2); }
  msg = message_for(dir + "/cut.model");
  EXPECT_NE(msg.find(dir + "/cut.model"), std::string::npos) << msg;
  // A folder as the model file.
  msg = message_for(dir);
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
}

TEST(SentencePieceTokenizer, TokenizerFromPathPicksTheKind) {
  const std::string root = fs::path(trained_dir()).parent_path().string();
  for (const std::string& path : {trained_dir(), root, trained_dir() + "/spiece.model"}) {
    auto tok = sdgen::tokenizer_from_path(path, {});
    auto* sp = dynamic_cast<sdgen::SentencePieceTokenizer*>(tok.get());
    ASSERT_NE(sp, nullptr) << path;
    EXPECT_EQ(sp->max_length(), 32) << path;
  }
  // tokenizer.model (the name other SentencePiece models use) is found too.
  const std::string other = sdgen::test::temp_dir("spiece-other-name");
  fs::copy_file(trained_dir() + "/spiece.model", other + "/tokenizer.model");
  EXPECT_NE(
      dynamic_cast<sdgen::SentencePieceTokenizer*>(sdgen::tokenizer_from_path(other, {}).get()),
      nullptr);
  EXPECT_EQ(sdgen::SentencePieceTokenizer::find_model(other), other + "/tokenizer.model");
  // A CLIP folder still gives a CLIPTokenizer.
  const std::string clip = sdgen::test::temp_dir("clip-minimal");
  CLIPTokenizer::write_minimal_vocab(clip);
  EXPECT_NE(dynamic_cast<CLIPTokenizer*>(sdgen::tokenizer_from_path(clip, {}).get()), nullptr);
  // Nothing there: the error names both kinds.
  const std::string none = sdgen::test::temp_dir("no-tokenizer");
  const std::string msg = message_of([&] { sdgen::tokenizer_from_path(none, {}); });
  EXPECT_NE(msg.find(none), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("spiece.model"), std::string::npos) << msg;
}

// The whole prompt path with a 32-token SentencePiece tokenizer on the tiny
// model: rows are the tokenizer's length, not 77.
TEST(SentencePieceTokenizer, PipelineUsesTheTokenizerLength) {
  SDGEN_REQUIRE_SHARED();
  sdgen::LoadOptions options;
  options.model_path = sdgen::test::tiny_model_dir();
  options.tokenizer_path = trained_dir();
  auto model = sdgen::load_model(options);
  ASSERT_NE(dynamic_cast<sdgen::SentencePieceTokenizer*>(model.tokenizer.get()), nullptr);
  sdgen::Pipeline pipeline(model);
  EXPECT_EQ(pipeline.encode_prompts({"a red circle"}, 1, 1).sizes(),
            (std::vector<int64_t>{1, 32, 32}));
  std::string long_prompt;
  for (int i = 0; i < 5; ++i) long_prompt += "a small red circle above a blue square ";
  EXPECT_EQ(pipeline.encode_prompts({long_prompt}, 1, 1).size(1), 64);  // two 30-token chunks
  sdgen::GenerationRequest request;
  request.prompt = "a small red circle above a blue square";
  request.steps = 2;
  request.width = request.height = 64;
  EXPECT_EQ(pipeline.generate(request).images.size(0), 1);

  // Rows longer than the text encoder's positions are refused at load.
  const std::string longer = sdgen::test::temp_dir("spiece-80");
  fs::copy_file(trained_dir() + "/spiece.model", longer + "/spiece.model");
  auto config = sdgen::read_json_file(trained_dir() + "/tokenizer_config.json");
  config["model_max_length"] = 80;
  { std::ofstream(longer + "/tokenizer_config.json") << config.dump(); }
  options.tokenizer_path = longer;
  const std::string msg = message_of([&] { sdgen::load_model(options); });
  EXPECT_NE(msg.find("max_position_embeddings 77"), std::string::npos) << msg;
}
