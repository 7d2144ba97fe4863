#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <c10/util/Exception.h>

#include <cstdio>
#include <new>

#include "cli/commands.h"
#include "kosmosg/error.h"
#include "kosmosg/runtime.h"

int main(int argc, char** argv) {
  kosmosg::ensure_passive_omp_wait(argv);
  CLI::App app{"kosmosg: Kosmos-G and Stable Diffusion 1.5 on LibTorch — generation, training, conversion"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::function<std::string()>(kosmosg::build_report),
                       "Print the kosmosg and LibTorch versions, CUDA and the visible GPUs, BLAS and threads, and exit");
  auto commands = kosmosg::cli::register_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const kosmosg::cli::Command* command = nullptr;
  for (const auto& c : commands)
    if (c.app->parsed()) command = &c;
  try {
    if (command) return command->run();
  } catch (const kosmosg::SettingError& e) {
    // The library names its settings ("steps"); the user knows them as options ("--steps").
    const auto option = command->settings.find(e.setting());
    std::fprintf(stderr, "kosmosg: error: %s\n",
                 option == command->settings.end() ? e.what() : e.renamed(option->second).what());
    return 1;
  } catch (const kosmosg::Error& e) {
    std::fprintf(stderr, "kosmosg: error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    // LibTorch's what() carries a C++ backtrace, which is for its developers, not for users.
    std::fprintf(stderr, "kosmosg: error: LibTorch: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "kosmosg: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kosmosg: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
