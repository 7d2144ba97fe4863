#pragma once
// Loading named weights into a torch::nn::Module whose parameter names are the upstream ones.
#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "kosmosg/io/safetensors.h"

namespace kosmosg::io {

struct LoadOptions {
  // Report missing keys (and unexpected ones, unless ignorable) as an error.
  bool strict = true;
  // Names in the source that may be absent from the module (non-persistent upstream buffers).
  std::vector<std::string> ignorable_suffixes = {"position_ids"};
  // What the error message calls the source (a file name, "param.*" of a golden case, ...).
  std::string source_name = "weights";
};

// Copies every tensor of `weights` into the parameter or buffer of `module` with the same name,
// converting dtypes to the module's. Accepts the aliases real files carry (legacy VAE attention
// names query/key/value/proj_attn). One error lists every missing, unexpected and
// shape-mismatched key.
void load_weights(torch::nn::Module& module, const TensorMap& weights,
                  const LoadOptions& options = {});

// Loads every `*.safetensors` weight file a diffusers/transformers component folder holds
// (preferring `<stem>.safetensors`, then `<stem>.fp16.safetensors`, then any single
// `*.safetensors`). Fails naming the folder when none is there.
TensorMap read_component_weights(const std::string& folder, const std::vector<std::string>& stems);

// The module's parameters and persistent buffers by name.
TensorMap state_dict(const torch::nn::Module& module);

}  // namespace kosmosg::io
