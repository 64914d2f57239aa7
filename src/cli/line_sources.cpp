#include "line_sources.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "options.h"
#include "sdgen/a1111.h"
#include "sdgen/error.h"
#include "sdgen/image_io.h"

namespace fs = std::filesystem;

namespace sdgen::cli {

bool VectorSource::next(PromptLine& line) {
  if (pos_ >= lines_.size()) return false;
  line = lines_[pos_++];
  return true;
}

bool StdinSource::next(PromptLine& line) {
  std::string text;
  if (!std::getline(std::cin, text)) return false;
  line = parse_prompt_line(text, ++number_);
  return true;
}

std::vector<PromptLine> read_prompt_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw CliError(kExitUsage, path + ": the prompt file is a folder");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw CliError(kExitUsage, path + ": cannot read the prompt file: " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) throw CliError(kExitUsage, path + ": cannot read the prompt file");
  return parse_prompt_text(text.str());
}

A1111Reading read_png_settings(const std::string& path, bool quiet) {
  PngImage png;
  try {
    png = read_png(path);
  } catch (const Error& e) {
    throw CliError(kExitUsage, std::string("--from-png: ") + e.what());
  }
  const std::string* text = nullptr;
  for (const auto& [key, value] : png.text)
    if (key == "parameters") text = &value;
  if (!text)
    throw CliError(kExitUsage, path + ": no A1111 'parameters' text chunk to read settings from");
  A1111Reading reading = read_a1111_settings(parse_a1111_parameters(*text), path);
  if (!quiet)
    for (const auto& w : reading.warnings)
      std::cerr << "sdgen: warning: " << path << ": " << w << "\n";
  if (!reading.errors.empty()) throw CliError(kExitUsage, reading.errors.front());
  return reading;
}

}  // namespace sdgen::cli
