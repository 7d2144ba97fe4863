#pragma once
// LoRA files (Kohya/A1111 and diffusers formats) and their attachment to a model's
// LoRA-compatible layers (kosmosg/nn/lora.h), unmerged or merged (diffusers v0.21.4 semantics).
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>

#include "kosmosg/io/safetensors.h"
#include "kosmosg/nn/lora.h"

namespace kosmosg::models {

// The updates of one LoRA file by the layer they adapt, per component. Layer names are as the
// file spells them: module paths ("down_blocks.0.attentions.0.proj_in") for diffusers files,
// paths with '.' replaced by '_' for Kohya files; either is matched against the model's paths.
struct LoraWeights {
  std::string source;  // the file, for messages
  std::map<std::string, nn::LoraUpdate> unet, text_encoder;  // strengths not yet set
};

// Reads a LoRA .safetensors file. Kohya/A1111 keys: lora_unet_<path>.{lora_down,lora_up}.weight
// and .alpha (0-dim or [1]), lora_te_<path>...; diffusers keys: [unet.|text_encoder.]<attention>
// .processor.{to_q,to_k,to_v,to_out}_lora.{down,up}.weight, <layer>.lora.{down,up}.weight,
// <layer>.lora_linear_layer.{down,up}.weight or <layer>.lora_{A,B}.weight, with optional
// <layer>.alpha. Keys of no known form, or a layer missing its down or up weight, are an error
// listing them.
LoraWeights read_lora(const std::string& path);
LoraWeights parse_lora(const io::TensorMap& tensors, const std::string& source);

// Attaches `lora` to `unet` and, when given, `text_encoder` (a CLIPTextModel) at `strength`,
// unmerged: the returned strength can be changed between calls. Layer names that match no
// LoRA-compatible layer are an error listing them (nothing is attached then). With no text
// encoder its updates are skipped; `skipped` (when given) receives their count.
std::shared_ptr<double> attach_lora(const LoraWeights& lora, torch::nn::Module& unet,
                                    torch::nn::Module* text_encoder, double strength,
                                    size_t* skipped = nullptr);

// Adds every attached update of `model`'s layers, at its current strength, into the weights.
void merge_lora(torch::nn::Module& model);

// Detaches every LoRA update from `model`'s layers (merged ones stay in the weights).
void remove_lora(torch::nn::Module& model);

}  // namespace kosmosg::models
