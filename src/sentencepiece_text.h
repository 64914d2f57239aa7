#pragma once

// Text preparation shared by SentencePieceTokenizer (with "do_lower_case" in
// its tokenizer_config.json) and tools/spm/sdgen_spm.cpp (before training and
// in its reference encoder): ASCII letters lower-cased, ASCII whitespace
// (tab, newline, vertical tab, form feed, carriage return) turned into spaces,
// so that "Red" and "red" are one piece and any whitespace run collapses.
// Models are trained with sentencepiece's identity normalisation, so this is
// all the case folding there is; other bytes pass unchanged.

#include <string>

namespace sdgen {

inline std::string prepare_sentencepiece_text(std::string text) {
  for (char& c : text) {
    if (c >= 'A' && c <= 'Z')
      c = static_cast<char>(c - 'A' + 'a');
    else if (c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r')
      c = ' ';
  }
  return text;
}

}  // namespace sdgen
