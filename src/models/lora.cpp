#include "kosmosg/models/lora.h"

#include <torch/torch.h>

#include <regex>
#include <set>
#include <unordered_map>

#include "kosmosg/error.h"

namespace kosmosg::models {
namespace {

enum class Part { Down, Up, Alpha };

struct PendingLayer {
  at::Tensor down, up;
  std::optional<double> alpha;
  std::vector<std::string> keys;  // where its tensors came from, for messages
};

using Pending = std::map<std::string, PendingLayer>;

std::string underscored(std::string path) {
  std::replace(path.begin(), path.end(), '.', '_');
  return path;
}

std::string list(const std::vector<std::string>& names, size_t shown = 40) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < shown; ++i) out += "\n  " + names[i];
  if (names.size() > shown) out += "\n  ... and " + std::to_string(names.size() - shown) + " more";
  return out;
}

double alpha_value(const at::Tensor& t, const std::string& key, const std::string& source) {
  if (t.numel() != 1 || t.dim() > 1)
    fail("lora", source + ": " + key + " has shape " + c10::str(t.sizes()) +
                     "; an alpha is a scalar (shape [] or [1])");
  return t.to(at::kDouble).item<double>();
}

// The diffusers attention-processor names and the layers they adapt in the UNet and in CLIP.
std::string processor_layer(const std::string& proj, bool text_encoder) {
  if (text_encoder) return proj == "to_out" ? "out_proj" : proj.substr(3) + "_proj";
  return proj == "to_out" ? "to_out.0" : proj;
}

// Sorts one diffusers-format key (component prefix already removed) into `pending`; false when
// the key has no known form.
bool parse_diffusers_key(const std::string& key, const at::Tensor& tensor, bool text_encoder,
                         const std::string& full_key, const std::string& source, Pending& pending) {
  static const std::regex processor(R"(^(.+?)\.(?:processor\.)?(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$)");
  static const std::regex layer_lora(R"(^(.+)\.(?:lora|lora_linear_layer)\.(down|up)\.weight$)");
  static const std::regex peft(R"(^(.+)\.lora_(A|B)\.weight$)");
  static const std::regex alpha(R"(^(.+)\.alpha$)");
  std::smatch m;
  std::string layer;
  Part part;
  if (std::regex_match(key, m, processor)) {
    layer = m[1].str() + "." + processor_layer(m[2].str(), text_encoder);
    part = m[3] == "down" ? Part::Down : Part::Up;
  } else if (std::regex_match(key, m, layer_lora)) {
    layer = m[1];
    part = m[2] == "down" ? Part::Down : Part::Up;
  } else if (std::regex_match(key, m, peft)) {
    layer = m[1];
    part = m[2] == "A" ? Part::Down : Part::Up;
  } else if (std::regex_match(key, m, alpha)) {
    layer = m[1];
    part = Part::Alpha;
  } else {
    return false;
  }
  auto& entry = pending[layer];
  entry.keys.push_back(full_key);
  if (part == Part::Down) entry.down = tensor;
  if (part == Part::Up) entry.up = tensor;
  if (part == Part::Alpha) entry.alpha = alpha_value(tensor, full_key, source);
  return true;
}

// A Kohya key: <layer>.{lora_down.weight, lora_up.weight, alpha}.
bool parse_kohya_key(const std::string& key, const at::Tensor& tensor, const std::string& full_key,
                     const std::string& source, Pending& pending) {
  const auto dot = key.find('.');
  if (dot == std::string::npos || dot == 0) return false;
  const std::string layer = key.substr(0, dot), suffix = key.substr(dot + 1);
  if (suffix != "lora_down.weight" && suffix != "lora_up.weight" && suffix != "alpha") return false;
  auto& entry = pending[layer];
  entry.keys.push_back(full_key);
  if (suffix == "lora_down.weight") entry.down = tensor;
  if (suffix == "lora_up.weight") entry.up = tensor;
  if (suffix == "alpha") entry.alpha = alpha_value(tensor, full_key, source);
  return true;
}

void finish(const Pending& pending, std::map<std::string, nn::LoraUpdate>& out,
            std::vector<std::string>& incomplete) {
  for (const auto& [layer, p] : pending) {
    if (!p.down.defined() || !p.up.defined()) {
      for (const auto& k : p.keys)
        incomplete.push_back(k + (p.down.defined() ? " (no up weight)" : " (no down weight)"));
      continue;
    }
    nn::LoraUpdate u;
    u.down = p.down;
    u.up = p.up;
    u.alpha = p.alpha.value_or(0.0);
    out.emplace(layer, std::move(u));
  }
}

// The LoRA-compatible layers of `model` by their path with '.' replaced by '_'.
std::unordered_map<std::string, std::pair<std::string, nn::LoraLayer*>> compatible_layers(
    torch::nn::Module& model) {
  std::unordered_map<std::string, std::pair<std::string, nn::LoraLayer*>> layers;
  for (const auto& item : model.named_modules()) {
    if (auto* layer = dynamic_cast<nn::LoraLayer*>(item.value().get()))
      layers.emplace(underscored(item.key()), std::make_pair(item.key(), layer));
  }
  return layers;
}

}  // namespace

LoraWeights parse_lora(const io::TensorMap& tensors, const std::string& source) {
  Pending unet, text;
  std::vector<std::string> unknown;
  for (const auto& [key, tensor] : tensors) {
    bool known;
    if (key.rfind("lora_unet_", 0) == 0)
      known = parse_kohya_key(key.substr(10), tensor, key, source, unet);
    else if (key.rfind("lora_te_", 0) == 0)
      known = parse_kohya_key(key.substr(8), tensor, key, source, text);
    else if (key.rfind("text_encoder.", 0) == 0)
      known = parse_diffusers_key(key.substr(13), tensor, true, key, source, text);
    else if (key.rfind("unet.", 0) == 0)
      known = parse_diffusers_key(key.substr(5), tensor, false, key, source, unet);
    else
      known = parse_diffusers_key(key, tensor, false, key, source, unet);
    if (!known) unknown.push_back(key);
  }
  if (!unknown.empty())
    fail("lora", source + ": " + std::to_string(unknown.size()) +
                     " keys are not LoRA weights this tool knows (Kohya lora_unet_/lora_te_ "
                     "lora_down/lora_up/alpha, or diffusers unet./text_encoder. down/up):" +
                     list(unknown));
  LoraWeights weights;
  weights.source = source;
  std::vector<std::string> incomplete;
  finish(unet, weights.unet, incomplete);
  finish(text, weights.text_encoder, incomplete);
  if (!incomplete.empty())
    fail("lora", source + ": layers without both a down and an up weight:" + list(incomplete));
  if (weights.unet.empty() && weights.text_encoder.empty())
    fail("lora", source + ": holds no LoRA weights");
  return weights;
}

LoraWeights read_lora(const std::string& path) {
  return parse_lora(io::SafeTensors::open(path).tensors(), path);
}

std::shared_ptr<double> attach_lora(const LoraWeights& lora, torch::nn::Module& unet,
                                    torch::nn::Module* text_encoder, double strength,
                                    size_t* skipped) {
  struct Target {
    nn::LoraLayer* layer;
    const nn::LoraUpdate* update;
    std::string name;
  };
  std::vector<Target> targets;
  std::vector<std::string> unmatched;
  auto match = [&](const std::map<std::string, nn::LoraUpdate>& updates, torch::nn::Module& model,
                   const std::string& component) {
    const auto layers = compatible_layers(model);
    for (const auto& [name, update] : updates) {
      auto it = layers.find(underscored(name));
      if (it == layers.end()) {
        unmatched.push_back(component + ": " + name);
        continue;
      }
      targets.push_back({it->second.second, &update, component + " " + it->second.first});
    }
  };
  match(lora.unet, unet, "unet");
  if (text_encoder) match(lora.text_encoder, *text_encoder, "text_encoder");
  if (skipped) *skipped = text_encoder ? 0 : lora.text_encoder.size();
  if (!unmatched.empty())
    fail("lora", lora.source + ": " + std::to_string(unmatched.size()) +
                     " LoRA layers match no layer of this model:" + list(unmatched));
  // Every shape is checked before anything is attached, so a bad file leaves the model as it was.
  for (const auto& t : targets) t.layer->check_lora(*t.update, lora.source + ": " + t.name);
  auto shared = std::make_shared<double>(strength);
  for (const auto& t : targets) {
    nn::LoraUpdate u = *t.update;
    u.strength = shared;
    t.layer->add_lora(std::move(u), lora.source + ": " + t.name);
  }
  return shared;
}

void merge_lora(torch::nn::Module& model) {
  for (const auto& item : model.named_modules())
    if (auto* layer = dynamic_cast<nn::LoraLayer*>(item.value().get())) layer->merge_lora();
}

void remove_lora(torch::nn::Module& model) {
  for (const auto& item : model.named_modules())
    if (auto* layer = dynamic_cast<nn::LoraLayer*>(item.value().get())) layer->clear_lora();
}

}  // namespace kosmosg::models
