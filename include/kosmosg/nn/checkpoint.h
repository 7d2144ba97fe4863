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

// Stores `block`'s floating parameters and buffers in `dtype` (bfloat16 or float16) to be computed
// in float32: GradientCheckpointing::run gives the block float32 copies of them for each call, so
// one block's float32 weights are alive at a time (diffusers' layerwise casting).
void store_block_weights(torch::nn::Module& block, c10::ScalarType dtype);

// How a model runs each of its repeated blocks: its checkpointing switch, and the float32 compute
// of blocks stored by store_block_weights.
struct GradientCheckpointing {
  bool enabled = false;
  bool reentrant_compat = false;  // see checkpoint()

  // fn(inputs) through checkpoint() over `block`'s parameters when enabled and `owner` is
  // training with grad mode on; a plain call otherwise (inference is unaffected). Without grad
  // mode, a block with half-precision weights whose first input is float32 runs on float32
  // copies of them, which are dropped when it returns.
  std::vector<at::Tensor> run(const torch::nn::Module& owner, const torch::nn::Module& block,
                              const CheckpointFn& fn, const std::vector<at::Tensor>& inputs) const;
  // The one-tensor form.
  at::Tensor run(const torch::nn::Module& owner, const torch::nn::Module& block,
                 const std::function<at::Tensor(const at::Tensor&)>& fn,
                 const at::Tensor& input) const;
};

}  // namespace kosmosg::nn
