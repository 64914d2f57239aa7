// sdgen command line: parses arguments and calls the library, nothing more.
// runner.cpp runs generations, info.cpp --info and --show-params, convert.cpp
// the `sdgen convert` subcommand, serve.cpp `sdgen serve`.

#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <CLI/CLI.hpp>

#include "convert.h"
#include "options.h"
#include "sdgen/error.h"
#include "sdgen/interrupt.h"
#include "sdgen/settings.h"
#ifdef SDGEN_WITH_SERVE
#include "serve.h"
#endif

using sdgen::cli::CliError;
using sdgen::cli::CommandLine;

namespace {

// Every flag comes from the settings table (sdgen/settings.def): a bool
// setting is a flag, the others take a value that the table checks.
struct FlagStorage {
  std::vector<std::string> texts;
  std::vector<std::vector<std::string>> lists;  // list settings: every occurrence
  std::unique_ptr<bool[]> bools;
  std::vector<CLI::Option*> options;
};

// What --help shows for a setting's value: INT, FLOAT, SEED, PATH, NAME (one
// of a list) or TEXT.
std::string type_name(const sdgen::SettingSpec& spec) {
  const auto d = spec.get(sdgen::Settings{});
  if (d.is_number_integer()) return "INT";
  if (d.is_number_float()) return "FLOAT";
  if (d.is_null()) return "SEED";
  if (spec.allowed == "a path") return "PATH";
  try {
    spec.from_text("\x01");  // text takes anything; a list of names does not
  } catch (const sdgen::SettingError&) {
    return spec.line_key == "output" || spec.name == "shard" ? "TEXT" : "NAME";
  }
  return "TEXT";
}

void add_table_flags(CLI::App& app, FlagStorage& storage) {
  const auto& table = sdgen::settings_table();
  storage.texts.resize(table.size());
  storage.lists.resize(table.size());
  storage.bools.reset(new bool[table.size()]());
  for (size_t i = 0; i < table.size(); ++i) {
    const auto& spec = table[i];
    std::string help = spec.help;
    if (spec.name == "sampler") {
      std::string names;
      for (const auto& n : sdgen::sampler_names()) names += (names.empty() ? "" : ", ") + n;
      help += ": " + names;
    }
    CLI::Option* option = nullptr;
    if (spec.is_flag) {
      option = app.add_flag(spec.flags, storage.bools[i], help);
    } else if (spec.is_list) {
      // Repeated, every value counts, one per flag (not split on spaces).
      option = app.add_option(spec.flags, storage.lists[i], help)
                   ->type_name(type_name(spec))
                   ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
                   ->allow_extra_args(false);
    } else {
      option = app.add_option(spec.flags, storage.texts[i], help);
    }
    // Given twice, the last one counts (a script can append an override).
    if (!spec.is_flag && !spec.is_list)
      option->type_name(type_name(spec))->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    if (!spec.default_text.empty()) option->default_str(spec.default_text);
    option->group(spec.group);
    storage.options.push_back(option);
  }
}

// The command line's values, checked by the table; throws CliError naming the
// flag and value ("--steps 0: must be between 1 and 1000").
CommandLine read_table_flags(const FlagStorage& storage) {
  CommandLine c;
  const auto& table = sdgen::settings_table();
  for (size_t i = 0; i < table.size(); ++i) {
    if (storage.options[i]->count() == 0) continue;
    const auto& spec = table[i];
    if (spec.is_flag) {
      c.layer.set(spec.name, storage.bools[i]);
      continue;
    }
    if (spec.is_list) {
      nlohmann::json items = nlohmann::json::array();
      for (const auto& text : storage.lists[i]) {
        try {
          for (const auto& item : spec.from_text(text)) items.push_back(item);
        } catch (const sdgen::SettingError& e) {
          throw CliError(sdgen::cli::kExitUsage,
                         sdgen::describe_flag_value(spec, text) + ": " + e.what());
        }
      }
      c.layer.set(spec.name, items);
      continue;
    }
    try {
      c.layer.set(spec.name, spec.from_text(storage.texts[i]));
    } catch (const sdgen::SettingError& e) {
      throw CliError(sdgen::cli::kExitUsage,
                     sdgen::describe_flag_value(spec, storage.texts[i]) + ": " + e.what());
    }
  }
  c.settings = sdgen::resolve_settings({&c.layer});
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  // A subcommand with flags of its own (none of the settings table's).
  if (argc > 1 && std::string(argv[1]) == "convert") return sdgen::cli::run_convert(argc, argv);
  // `sdgen serve`: the settings table's flags (model, device, defaults) and the server's own.
  const bool serve = argc > 1 && std::string(argv[1]) == "serve";
#ifndef SDGEN_WITH_SERVE
  if (serve) {
    std::cerr << "sdgen: error: this sdgen was built without `serve` (cpp-httplib was not found; "
                 "install libcpp-httplib-dev and rebuild)"
              << std::endl;
    return sdgen::cli::kExitUsage;
  }
#endif
  CLI::App app{serve ? "sdgen serve: the model loaded once, behind the A1111 and OpenAI image APIs"
                     : "sdgen: Stable Diffusion 1.x/2.x text-to-image on libtorch"};
  app.set_version_flag("--version", std::string("sdgen ") + SDGEN_VERSION);
  app.get_formatter()->column_width(34);
  FlagStorage storage;
  add_table_flags(app, storage);
#ifdef SDGEN_WITH_SERVE
  sdgen::cli::ServeOptions serve_options;
  if (serve) sdgen::cli::add_serve_flags(app, serve_options);
#endif

  try {
    app.parse(serve ? argc - 1 : argc, serve ? argv + 1 : argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what()) << " (see sdgen --help)"
              << std::endl;
    return sdgen::cli::kExitUsage;
  }

  try {
    const CommandLine command_line = read_table_flags(storage);
    const sdgen::Settings& o = command_line.settings;
#ifdef SDGEN_WITH_SERVE
    if (serve) return sdgen::cli::run_serve(command_line, serve_options);
#endif
    if (!o.show_params.empty()) return sdgen::cli::run_show_params(o);
    if (o.info) return sdgen::cli::run_info(o);
    // Ctrl-C / SIGTERM: stop after the current sampling step, exit 130.
    sdgen::install_interrupt_handlers(!o.quiet && ::isatty(STDERR_FILENO) != 0);
    return sdgen::cli::run_generation(command_line);
  } catch (const CliError& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what()) << std::endl;
    return e.code();
  } catch (const sdgen::Error& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what()) << std::endl;
  } catch (const c10::Error& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what_without_backtrace()) << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "sdgen: error: " << sdgen::cli::one_line(e.what()) << std::endl;
  }
  return sdgen::cli::kExitGeneration;
}
