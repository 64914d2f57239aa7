#include "convert.h"

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "options.h"
#include "sdgen/error.h"
#include "sdgen/torch_checkpoint.h"

namespace sdgen::cli {

namespace {

std::string size_text(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", static_cast<double>(bytes) / 1e6);
  return buf;
}

// "536 tensors (F32)", "1131 tensors (1123 F16, 8 I64)".
std::string tensors_text(const ConvertReport& report) {
  std::map<std::string, size_t> counts;
  for (const auto& [name, dtype] : report.tensors) ++counts[dtype_name(dtype)];
  std::string kinds;
  for (const auto& [dtype, n] : counts)
    kinds +=
        (kinds.empty() ? "" : ", ") + (counts.size() > 1 ? std::to_string(n) + " " : "") + dtype;
  return std::to_string(report.tensors.size()) + " tensors" +
         (kinds.empty() ? "" : " (" + kinds + ")");
}

// "1 metadata entry (global_step)"; names listed up to a few.
std::string names_text(size_t n, const char* one, const char* many,
                       const std::vector<std::string>& names) {
  std::string out = std::to_string(n) + " " + (n == 1 ? one : many);
  if (n == 0) return out;
  std::string list;
  for (size_t i = 0; i < names.size() && i < 4; ++i) list += (i ? ", " : "") + names[i];
  if (names.size() > 4) list += ", ...";
  return out + " (" + list + ")";
}

}  // namespace

int run_convert(int argc, char** argv) {
  CLI::App app{
      "sdgen convert: a PyTorch checkpoint (.ckpt, .pt, .pth, .bin; torch.save's zip format) to "
      "safetensors, without running any of its code. Tensors keep their names (a checkpoint's "
      "state_dict becomes the top level, nested dicts are joined with '.'); strings and numbers "
      "go to the file's metadata.",
      "sdgen convert"};
  std::string input, output, dtype_flag;
  bool force = false, quiet = false;
  app.add_option("input", input, "The checkpoint to convert")->required()->type_name("PATH");
  app.add_option("-o,--output", output,
                 "The safetensors file to write (default: the input with .safetensors)")
      ->type_name("PATH");
  app.add_option("--dtype", dtype_flag,
                 "Store float tensors as fp16, bf16 or fp32 (default: as they are)")
      ->check(CLI::IsMember({"fp16", "bf16", "fp32"}))
      ->type_name("NAME");
  app.add_flag("--force", force, "Replace the output file if it exists");
  app.add_flag("-q,--quiet", quiet, "Print nothing but errors");
  try {
    app.parse(argc - 1, argv + 1);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "sdgen: error: " << one_line(e.what()) << " (see sdgen convert --help)"
              << std::endl;
    return kExitUsage;
  }
  ConvertOptions options;
  options.overwrite = force;
  if (dtype_flag == "fp16") options.dtype = DType::F16;
  if (dtype_flag == "bf16") options.dtype = DType::BF16;
  if (dtype_flag == "fp32") options.dtype = DType::F32;
  if (output.empty())
    output = std::filesystem::path(input).replace_extension(".safetensors").string();
  try {
    const ConvertReport report = convert_torch_checkpoint(input, output, options);
    if (!quiet) {
      std::vector<std::string> metadata;
      for (const auto& kv : report.metadata) metadata.push_back(kv.first);
      std::cerr << "sdgen: converted " << input << " -> " << output << ": " << tensors_text(report)
                << ", "
                << names_text(metadata.size(), "metadata entry", "metadata entries", metadata)
                << ", "
                << names_text(report.dropped.size(), "other entry dropped", "other entries dropped",
                              report.dropped)
                << ", " << size_text(report.bytes) << std::endl;
    }
    return kExitOk;
  } catch (const std::exception& e) {
    std::cerr << "sdgen: error: " << one_line(e.what()) << std::endl;
    return kExitUsage;
  }
}

}  // namespace sdgen::cli
