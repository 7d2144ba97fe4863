#pragma once
// Each subcommand lives in its own file and contributes one entry here.
#include <CLI/CLI.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace kosmosg::cli {

struct Command {
  CLI::App* app;
  std::function<int()> run;
  // The command's options by the library settings they set ("steps" → "--steps"): a library
  // error about a setting is reported under the option's name.
  std::map<std::string, std::string> settings = {};
};

Command add_convert(CLI::App& app);
Command add_data(CLI::App& app);
Command add_eval(CLI::App& app);
Command add_export(CLI::App& app);
Command add_generate(CLI::App& app);
Command add_inspect(CLI::App& app);
Command add_train(CLI::App& app);

inline std::vector<Command> register_commands(CLI::App& app) {
  return {add_generate(app), add_train(app), add_convert(app), add_export(app), add_eval(app), add_data(app), add_inspect(app)};
}

}  // namespace kosmosg::cli
