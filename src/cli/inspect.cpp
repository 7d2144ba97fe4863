#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/io/torch_checkpoint.h"
#include "kosmosg/io/zip.h"

namespace kosmosg::cli {
namespace {

const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return "F64";
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kLong: return "I64";
    case at::kInt: return "I32";
    case at::kShort: return "I16";
    case at::kChar: return "I8";
    case at::kByte: return "U8";
    case at::kBool: return "BOOL";
    default: return "?";
  }
}

// A torch.save checkpoint: a fairseq one lists its model state dict and cfg.model, anything else
// the tensors at its top level.
int inspect_torch_checkpoint(const std::string& path) {
  io::TensorMap tensors;
  nlohmann::json model_cfg;
  io::PickleValue state = io::load_torch_checkpoint(path);
  if (state.kind() == io::PickleValue::Kind::Dict && state.as_dict().find("model")) {
    auto ckpt = io::read_fairseq_checkpoint(std::move(state), path);
    tensors = std::move(ckpt.model);
    std::printf("fairseq checkpoint, %lld updates\n", static_cast<long long>(ckpt.num_updates));
    if (ckpt.cfg.is_object() && ckpt.cfg.contains("model")) model_cfg = ckpt.cfg["model"];
  } else if (state.kind() == io::PickleValue::Kind::Dict) {
    for (const auto& [k, v] : state.as_dict().items)
      if (k.kind() == io::PickleValue::Kind::String && v.kind() == io::PickleValue::Kind::Tensor)
        tensors.emplace(k.as_string(), v.as_tensor());
  }
  if (model_cfg.is_object())
    for (const auto& [k, v] : model_cfg.items()) std::printf("cfg.model.%s: %s\n", k.c_str(), v.dump().c_str());
  size_t total = 0;
  for (const auto& [name, t] : tensors) {
    std::string shape;
    for (auto d : t.sizes()) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    std::printf("%-60s %-5s [%s]\n", name.c_str(), dtype_name(t.scalar_type()), shape.c_str());
    total += t.numel() * t.element_size();
  }
  std::printf("%zu tensors, %.1f MiB\n", tensors.size(), total / 1048576.0);
  return 0;
}

}  // namespace

Command add_inspect(CLI::App& app) {
  auto* sub = app.add_subcommand("inspect", "List the tensors (name, dtype, shape) and metadata of a safetensors file or a PyTorch / fairseq checkpoint");
  auto path = std::make_shared<std::string>();
  sub->add_option("file", *path, "A .safetensors or .pt file")->required();
  return {sub, [path] {
            if (io::is_zip_file(*path)) return inspect_torch_checkpoint(*path);
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
