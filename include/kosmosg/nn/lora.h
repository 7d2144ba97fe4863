#pragma once
// Layers that accept LoRA updates (diffusers' LoRACompatibleLinear / LoRACompatibleConv): a
// Linear or Conv2d, with the same parameters, whose output gains low-rank terms attached at run
// time. The UNet and the CLIP text encoder are built from these, so LoRA files adapt them.
#include <ATen/core/Tensor.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <string>
#include <vector>

#include "kosmosg/nn/linear.h"

namespace kosmosg::nn {

// One low-rank update: output += strength · (alpha / rank) · up(down(x)).
struct LoraUpdate {
  at::Tensor down;   // [rank, in] (Linear) or [rank, in, kh, kw] (Conv2d, the layer's kernel)
  at::Tensor up;     // [out, rank] or [out, rank, 1, 1]
  double alpha = 0;  // the network alpha; 0: none (the factor alpha / rank is 1)
  // Shared by all layers of one LoRA file, so its strength can change between calls.
  std::shared_ptr<const double> strength;

  // alpha / rank, or 1 without an alpha.
  double factor() const;
};

// The LoRA state of a compatible layer.
class LoraLayer {
 public:
  virtual ~LoraLayer() = default;
  // Checks that `update` fits this layer; an error naming `name` (the LoRA layer) when not.
  void check_lora(const LoraUpdate& update, const std::string& name);
  // Attaches `update` (checked as above), cast to the weight's device and dtype.
  void add_lora(LoraUpdate update, const std::string& name);
  // Adds the attached updates, at their current strengths, into the weight and detaches them.
  void merge_lora();
  // Detaches every update, restoring the plain layer.
  void clear_lora() { lora_.clear(); }
  size_t lora_count() const { return lora_.size(); }

 protected:
  virtual at::Tensor& lora_weight() = 0;
  // Calls add(update, scale) for each attached update whose scale, strength · factor, is not 0
  // (so a LoRA at strength 0 costs nothing and changes nothing).
  template <typename Add>
  void for_each_active(Add&& add) const {
    for (const auto& u : lora_) {
      const double scale = *u.strength * u.factor();
      if (scale != 0) add(u, scale);
    }
  }

  std::vector<LoraUpdate> lora_;
};

class LoRACompatibleLinearImpl : public LinearImpl, public LoraLayer {
 public:
  using LinearImpl::LinearImpl;
  at::Tensor forward(const at::Tensor& x);

 protected:
  at::Tensor& lora_weight() override { return weight; }
};
TORCH_MODULE(LoRACompatibleLinear);

class LoRACompatibleConvImpl : public torch::nn::Conv2dImpl, public LoraLayer {
 public:
  using torch::nn::Conv2dImpl::Conv2dImpl;
  at::Tensor forward(const at::Tensor& x);
  // For a 1×1 convolution: the same map applied to channels-last tokens [..., in] → [..., out].
  at::Tensor forward_tokens(const at::Tensor& tokens);
  // When on, CPU float32 inference without gradients reorders a weight that outweighs its input
  // (the low-resolution layers) once into oneDNN's blocked layout, which then replaces the plain
  // `weight` (a oneDNN tensor of the same sizes). Any other use, or off, restores the plain one.
  // Both swaps register a new tensor: an optimiser must take the parameters with packing off.
  void set_weight_packing(bool on);

 protected:
  at::Tensor& lora_weight() override;

 private:
  bool packs_for(const at::Tensor& x) const;
  void replace_weight(at::Tensor w);
  void unpack_weight();

  bool packing_ = false;
};
TORCH_MODULE(LoRACompatibleConv);

// set_weight_packing(on) on every LoRACompatibleConv in `module`.
void set_weight_packing(torch::nn::Module& module, bool on);

}  // namespace kosmosg::nn
