// sdgen-spm: trains the SentencePiece tokenizers of sdgen's own models, and
// encodes with sentencepiece itself (the reference the native reader in
// src/tokenizer_sentencepiece.cpp is tested against). It links only
// libsentencepiece: Debian's copy bundles a protobuf that crashes any process
// that also loads libtorch, so this cannot live in sdgen_lib.
//
//   sdgen-spm train --input CAPTIONS.txt --out DIR --vocab-size N --max-length L
//       one sentence per line ("-" = stdin); writes DIR/spiece.model,
//       DIR/tokenizer_config.json and DIR/special_tokens_map.json.
//   sdgen-spm encode --model FILE
//       reads lines on stdin, prints the ids of each (space-separated) per line.
//
// Errors: one line "sdgen-spm: error: ..." on stderr, exit status 1 (2 for usage).

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "sentencepiece_text.h"

namespace fs = std::filesystem;

namespace {

// The pieces and ids of sdgen's SentencePiece models.
constexpr const char* kPadPiece = "<pad>";
constexpr const char* kUnkPiece = "<unk>";
constexpr const char* kBosPiece = "<s>";
constexpr const char* kEosPiece = "</s>";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --key value pairs after the command.
std::map<std::string, std::string> parse_options(int argc, char** argv,
                                                 const std::vector<std::string>& known) {
  std::map<std::string, std::string> out;
  for (int i = 2; i < argc; i += 2) {
    const std::string key = argv[i];
    bool ok = false;
    for (const auto& k : known) ok = ok || key == "--" + k;
    if (!ok) throw UsageError("unknown option '" + key + "'");
    if (i + 1 >= argc) throw UsageError(key + " needs a value");
    out[key.substr(2)] = argv[i + 1];
  }
  for (const auto& k : known)
    if (!out.count(k)) throw UsageError("--" + k + " is required");
  return out;
}

int parse_int(const std::string& text, const std::string& what, int min) {
  size_t used = 0;
  int value = 0;
  try {
    value = std::stoi(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || value < min)
    throw UsageError(what + " must be an integer >= " + std::to_string(min) + ", found '" + text +
                     "'");
  return value;
}

void write_file(const fs::path& file, const std::string& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << bytes;
  out.close();
  if (!out) throw std::runtime_error(file.string() + ": cannot write");
}

// The training sentences, from memory.
class SentenceList : public sentencepiece::SentenceIterator {
 public:
  explicit SentenceList(const std::vector<std::string>& sentences) : sentences_(sentences) {}
  bool done() const override { return next_ >= sentences_.size(); }
  void Next() override { ++next_; }
  const std::string& value() const override { return sentences_[next_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& sentences_;
  size_t next_ = 0;
};

int train(int argc, char** argv) {
  const auto o = parse_options(argc, argv, {"input", "out", "vocab-size", "max-length"});
  const int vocab_size = parse_int(o.at("vocab-size"), "--vocab-size", 5);
  const int max_length = parse_int(o.at("max-length"), "--max-length", 2);

  std::vector<std::string> sentences;
  {
    std::ifstream file;
    std::istream* in = &std::cin;
    if (o.at("input") != "-") {
      file.open(o.at("input"), std::ios::binary);
      if (!file) throw std::runtime_error(o.at("input") + ": cannot open");
      in = &file;
    }
    std::string line;
    while (std::getline(*in, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      line = sdgen::prepare_sentencepiece_text(line);
      if (line.find_first_not_of(' ') != std::string::npos) sentences.push_back(line);
    }
  }
  if (sentences.empty()) throw std::runtime_error(o.at("input") + ": no sentences");

  // BPE, not unigram: on a caption corpus with a few dozen distinct words the
  // unigram trainer keeps ~40 seed pieces and splits most words into letters;
  // BPE learns whole words. identity normalisation: sdgen reads the model
  // natively and implements no charsmap; case folding is
  // prepare_sentencepiece_text (do_lower_case in tokenizer_config.json).
  // Deterministic: one thread, every sentence in order (no sampling or
  // shuffling). hard_vocab_limit=false: a small corpus gives fewer pieces
  // instead of an error. minloglevel=2: only errors (returned as a Status).
  const std::unordered_map<std::string, std::string> options = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"hard_vocab_limit", "false"},
      {"character_coverage", "1.0"},
      {"normalization_rule_name", "identity"},
      {"pad_id", "0"},
      {"unk_id", "1"},
      {"bos_id", "2"},
      {"eos_id", "3"},
      {"pad_piece", kPadPiece},
      {"unk_piece", kUnkPiece},
      {"bos_piece", kBosPiece},
      {"eos_piece", kEosPiece},
      {"num_threads", "1"},
      {"input_sentence_size", "0"},
      {"shuffle_input_sentence", "false"},
      {"minloglevel", "2"},
  };
  SentenceList iterator(sentences);
  // With an output string sentencepiece writes no files itself (no .vocab).
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(options, &iterator, &model);
  if (!status.ok()) throw std::runtime_error("training failed: " + status.ToString());
  if (model.empty()) throw std::runtime_error("training produced an empty model");

  const fs::path dir(o.at("out"));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir.string() + ": cannot create folder (" + ec.message() + ")");
  write_file(dir / "spiece.model", model);
  write_file(dir / "tokenizer_config.json",
             std::string("{\n") + "  \"tokenizer_class\": \"sdgen.SentencePieceTokenizer\",\n" +
                 "  \"bos_token\": \"" + kBosPiece + "\",\n" + "  \"eos_token\": \"" + kEosPiece +
                 "\",\n" + "  \"pad_token\": \"" + kPadPiece + "\",\n" + "  \"unk_token\": \"" +
                 kUnkPiece + "\",\n" + "  \"do_lower_case\": true,\n" +
                 "  \"model_max_length\": " + std::to_string(max_length) + "\n}\n");
  write_file(dir / "special_tokens_map.json",
             std::string("{\n") + "  \"bos_token\": \"" + kBosPiece + "\",\n" +
                 "  \"eos_token\": \"" + kEosPiece + "\",\n" + "  \"pad_token\": \"" + kPadPiece +
                 "\",\n" + "  \"unk_token\": \"" + kUnkPiece + "\"\n}\n");
  return 0;
}

int encode(int argc, char** argv) {
  const auto o = parse_options(argc, argv, {"model"});
  sentencepiece::SentencePieceProcessor processor;
  const auto status = processor.Load(o.at("model"));
  if (!status.ok())
    throw std::runtime_error(o.at("model") + ": not a valid SentencePiece model (" +
                             status.ToString() + ")");
  // do_lower_case as the tokenizer_config.json beside the model says (the
  // files sdgen-spm writes always say true).
  bool lower_case = false;
  {
    std::ifstream json(fs::path(o.at("model")).parent_path() / "tokenizer_config.json");
    std::string text((std::istreambuf_iterator<char>(json)), std::istreambuf_iterator<char>());
    lower_case = text.find("\"do_lower_case\": true") != std::string::npos;
  }
  std::string line, out;
  std::vector<int> ids;
  while (std::getline(std::cin, line)) {
    const auto st =
        processor.Encode(lower_case ? sdgen::prepare_sentencepiece_text(line) : line, &ids);
    if (!st.ok()) throw std::runtime_error("encode failed: " + st.ToString());
    out.clear();
    for (size_t i = 0; i < ids.size(); ++i) out += (i ? " " : "") + std::to_string(ids[i]);
    std::cout << out << '\n';
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string usage =
      "usage: sdgen-spm train --input CAPTIONS.txt --out DIR --vocab-size N --max-length L\n"
      "       sdgen-spm encode --model FILE   (lines on stdin, ids on stdout)\n";
  try {
    const std::string command = argc > 1 ? argv[1] : "";
    if (command == "train") return train(argc, argv);
    if (command == "encode") return encode(argc, argv);
    if (command == "--help" || command == "-h") {
      std::cout << usage;
      return 0;
    }
    throw UsageError(command.empty() ? "no command" : "unknown command '" + command + "'");
  } catch (const UsageError& e) {
    std::cerr << "sdgen-spm: error: " << e.what() << "\n" << usage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sdgen-spm: error: " << e.what() << "\n";
    return 1;
  }
}
