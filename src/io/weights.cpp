#include "kosmosg/io/weights.h"

#include <filesystem>
#include <regex>
#include <set>
#include <sstream>

#include "kosmosg/error.h"

namespace kosmosg::io {
namespace {

// Old spellings real weight files carry, mapped to the names our modules use.
struct Alias {
  std::regex pattern;
  const char* replacement;
};

const std::vector<Alias>& aliases() {
  static const std::vector<Alias> table = {
      {std::regex(R"((.*attentions\.\d+)\.query\.(weight|bias)$)"), "$1.to_q.$2"},
      {std::regex(R"((.*attentions\.\d+)\.key\.(weight|bias)$)"), "$1.to_k.$2"},
      {std::regex(R"((.*attentions\.\d+)\.value\.(weight|bias)$)"), "$1.to_v.$2"},
      {std::regex(R"((.*attentions\.\d+)\.proj_attn\.(weight|bias)$)"), "$1.to_out.0.$2"},
  };
  return table;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void append_list(std::ostringstream& os, const char* title, const std::vector<std::string>& items) {
  if (items.empty()) return;
  os << "\n  " << title << " (" << items.size() << "):";
  for (const auto& i : items) os << "\n    " << i;
}

}  // namespace

TensorMap state_dict(const torch::nn::Module& module) {
  TensorMap out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.emplace(p.key(), p.value());
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.emplace(b.key(), b.value());
  return out;
}

void load_weights(torch::nn::Module& module, const TensorMap& weights, const LoadOptions& options) {
  TensorMap targets = state_dict(module);
  std::vector<std::string> unexpected, mismatched;
  std::set<std::string> loaded;
  torch::NoGradGuard no_grad;
  for (const auto& [raw_name, tensor] : weights) {
    std::string name = raw_name;
    if (!targets.count(name)) {
      for (const auto& alias : aliases()) {
        std::string renamed = std::regex_replace(raw_name, alias.pattern, alias.replacement);
        if (renamed != raw_name && targets.count(renamed)) {
          name = renamed;
          break;
        }
      }
    }
    auto it = targets.find(name);
    if (it == targets.end()) {
      bool ignorable = false;
      for (const auto& suffix : options.ignorable_suffixes) ignorable |= ends_with(raw_name, suffix);
      if (!ignorable) unexpected.push_back(raw_name);
      continue;
    }
    at::Tensor target = it->second;
    if (target.sizes() != tensor.sizes()) {
      mismatched.push_back(raw_name + ": file has " + c10::str(tensor.sizes()) +
                           ", module expects " + c10::str(target.sizes()));
      continue;
    }
    target.copy_(tensor);
    loaded.insert(name);
  }
  std::vector<std::string> missing;
  for (const auto& [name, t] : targets)
    if (!loaded.count(name)) missing.push_back(name);
  const bool bad = !mismatched.empty() || (options.strict && (!missing.empty() || !unexpected.empty()));
  if (!bad) return;
  std::ostringstream os;
  os << options.source_name << " does not match the module";
  append_list(os, "shape mismatches", mismatched);
  if (options.strict) {
    append_list(os, "missing keys", missing);
    append_list(os, "unexpected keys", unexpected);
  }
  fail("load_weights", os.str());
}

TensorMap read_component_weights(const std::string& folder, const std::vector<std::string>& stems) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(folder)) fail("load_weights", folder + " is not a folder");
  for (const auto& stem : stems) {
    for (const char* variant : {".safetensors", ".fp16.safetensors"}) {
      fs::path p = fs::path(folder) / (stem + variant);
      if (fs::exists(p)) return SafeTensors::open(p.string()).tensors();
    }
  }
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(folder))
    if (e.path().extension() == ".safetensors") found.push_back(e.path());
  if (found.size() == 1) return SafeTensors::open(found[0].string()).tensors();
  std::string expected;
  for (const auto& s : stems) expected += (expected.empty() ? "" : " or ") + s + ".safetensors";
  if (found.empty())
    fail("load_weights", folder + " holds no weights: expected " + expected +
                             " (convert .bin files to safetensors first)");
  fail("load_weights", folder + " holds several .safetensors files and none is named " + expected);
}

}  // namespace kosmosg::io
