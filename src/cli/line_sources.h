#pragma once

// Where a generation run's entries and settings come from besides the
// command line: prompt-file lines (a whole file or standard input as it
// arrives) and --from-png's A1111 parameters.

#include <memory>
#include <string>
#include <vector>

#include "sdgen/prompt_file.h"
#include "sdgen/settings.h"

namespace sdgen::cli {

// Where prompt-file lines come from: a whole file, standard input line by
// line (each line is generated as it arrives), or the single -p prompt.
class LineSource {
 public:
  virtual ~LineSource() = default;
  virtual bool next(PromptLine& line) = 0;
};

class VectorSource : public LineSource {
 public:
  explicit VectorSource(std::vector<PromptLine> lines) : lines_(std::move(lines)) {}
  bool next(PromptLine& line) override;

 private:
  std::vector<PromptLine> lines_;
  size_t pos_ = 0;
};

class StdinSource : public LineSource {
 public:
  bool next(PromptLine& line) override;

 private:
  int number_ = 0;
};

// All lines of a prompt file; throws CliError (usage) when it cannot be read.
std::vector<PromptLine> read_prompt_file(const std::string& path);

// --from-png: the PNG's A1111 parameters as a settings layer (below the
// command line). Throws CliError (usage) when the file has none or a value is
// not allowed; warnings are printed unless `quiet`.
A1111Reading read_png_settings(const std::string& path, bool quiet);

}  // namespace sdgen::cli
