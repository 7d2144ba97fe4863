#pragma once
// Gradient checkpointing (torch.utils.checkpoint for LibTorch, which has none): a block runs
// without keeping its activations, and runs again, with grad and the same RNG and autocast
// state, when the backward pass reaches it. Trades one extra forward per block for the memory
// of its activations.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <functional>
#include <vector>

namespace kosmosg::nn {

// What a checkpointed block computes: tensors in (some may be undefined), tensors out. It runs
// twice, so it must not change state other than through the RNG (dropout).
using CheckpointFn = std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>;

// Runs fn(inputs) without keeping activations and returns its outputs, whose backward
// recomputes fn. `params` are the tensors fn reads besides `inputs` (a module's parameters):
// those that require grad get gradients even when no input requires grad. With
// `reentrant_compat` it behaves as PyTorch's reentrant checkpoint (use_reentrant=True, what
// official Kosmos-G runs): when no input requires grad the outputs do not either, so `params`
// get no gradient. Without grad mode it is a plain call.
std::vector<at::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<at::Tensor>& inputs,
                                   const std::vector<at::Tensor>& params = {},
                                   bool reentrant_compat = false);

// One tensor in, one out.
at::Tensor checkpoint(const std::function<at::Tensor(const at::Tensor&)>& fn,
                      const at::Tensor& input, const std::vector<at::Tensor>& params = {},
                      bool reentrant_compat = false);

// A model's checkpointing switch, applied to each of its repeated blocks.
struct GradientCheckpointing {
  bool enabled = false;
  bool reentrant_compat = false;  // see checkpoint()

  // fn(inputs) through checkpoint() over `block`'s parameters when enabled and `owner` is
  // training with grad mode on; a plain call otherwise (inference is unaffected).
  std::vector<at::Tensor> run(const torch::nn::Module& owner, const torch::nn::Module& block,
                              const CheckpointFn& fn, const std::vector<at::Tensor>& inputs) const;
  // The one-tensor form.
  at::Tensor run(const torch::nn::Module& owner, const torch::nn::Module& block,
                 const std::function<at::Tensor(const at::Tensor&)>& fn,
                 const at::Tensor& input) const;
};

}  // namespace kosmosg::nn
