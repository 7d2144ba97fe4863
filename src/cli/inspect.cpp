#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kosmosg/io/safetensors.h"

namespace kosmosg::cli {

Command add_inspect(CLI::App& app) {
  auto* sub = app.add_subcommand("inspect", "List the tensors (name, dtype, shape) and metadata of a safetensors file");
  auto path = std::make_shared<std::string>();
  sub->add_option("file", *path, "A .safetensors file")->required();
  return {sub, [path] {
            auto f = io::SafeTensors::open(*path);
            for (const auto& [k, v] : f.metadata()) std::printf("metadata %s: %s\n", k.c_str(), v.c_str());
            size_t total = 0;
            for (const auto& name : f.keys()) {
              const auto& info = f.info(name);
              std::string shape;
              for (auto d : info.shape) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
              std::printf("%-60s %-5s [%s]\n", name.c_str(), info.dtype.c_str(), shape.c_str());
              total += info.end - info.begin;
            }
            std::printf("%zu tensors, %.1f MiB\n", f.keys().size(), total / 1048576.0);
            return 0;
          }};
}

}  // namespace kosmosg::cli
