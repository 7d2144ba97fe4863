#pragma once
// ControlNet: diffusers' ControlNetModel (v0.21.4 semantics), a copy of the UNet's encoder that
// reads a control image and returns residuals for the UNet's skip tensors and mid block.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "kosmosg/io/config.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/models/unet_blocks.h"

namespace kosmosg::models {

// ControlNetModel config: the UNet keys it shares plus its own, with the class defaults.
struct ControlNetConfig {
  UNet2DConditionConfig unet;  // conv_in, time embedding, down and mid blocks
  std::vector<int64_t> conditioning_embedding_out_channels{16, 32, 96, 256};
  int64_t conditioning_channels = 3;
  std::string controlnet_conditioning_channel_order = "rgb";  // "bgr" flips the channels
  bool global_pool_conditions = false;                          // residuals averaged over H, W

  // Reads a diffusers ControlNetModel config.json object; unsupported keys are errors naming them.
  static ControlNetConfig from_json(const io::Json& json);
  // Pixels of control image per latent cell: 2^(stride-2 convolutions of the embedding).
  int64_t cond_scale() const;
};

namespace blocks {

// diffusers ControlNetConditioningEmbedding: conv_in, blocks (pairs of 3×3 convs, the second of
// stride 2), conv_out, with SiLU between them; control image → conv_in's output width.
class ControlNetConditioningEmbeddingImpl : public torch::nn::Module {
 public:
  ControlNetConditioningEmbeddingImpl(int64_t conditioning_channels,
                                      const std::vector<int64_t>& block_out_channels,
                                      int64_t embedding_channels);
  at::Tensor forward(const at::Tensor& image);

  torch::nn::Conv2d conv_in{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(ControlNetConditioningEmbedding);

}  // namespace blocks

// diffusers ControlNetModel: conv_in, time_embedding, controlnet_cond_embedding, down_blocks,
// controlnet_down_blocks, mid_block, controlnet_mid_block.
class ControlNetModelImpl : public torch::nn::Module {
 public:
  explicit ControlNetModelImpl(const ControlNetConfig& config);

  // Residuals for the UNet, each times `conditioning_scale`, for `sample` [B, 4, h, w] at
  // `timestep` ([], [1] or [B]) with `encoder_hidden_states` [B, L, D] and `controlnet_cond`
  // [B, 3, s·h, s·w] in [0, 1] (s = config().cond_scale()).
  UNetResiduals forward(const at::Tensor& sample, const at::Tensor& timestep,
                        const at::Tensor& encoder_hidden_states, const at::Tensor& controlnet_cond,
                        double conditioning_scale = 1.0);

  const ControlNetConfig& config() const { return config_; }

  torch::nn::Conv2d conv_in{nullptr};
  blocks::TimestepEmbedding time_embedding{nullptr};
  blocks::ControlNetConditioningEmbedding controlnet_cond_embedding{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};             // blocks::DownBlock
  torch::nn::ModuleList controlnet_down_blocks{nullptr};  // 1×1 Conv2d per skip tensor
  blocks::MidBlock mid_block{nullptr};
  torch::nn::Conv2d controlnet_mid_block{nullptr};

 private:
  ControlNetConfig config_;
};
TORCH_MODULE(ControlNetModel);

// Loads a diffusers ControlNetModel folder (config.json + diffusion_pytorch_model.safetensors
// or .bin). Errors name the folder: missing files, another model class (a unet/ folder, a
// whole pipeline), weights that do not fit.
ControlNetModel load_controlnet(const std::string& dir);

// Checks that `controlnet`'s residuals fit `unet` (same widths, blocks and cross-attention
// width); an error naming `name` and the first difference otherwise.
void check_controlnet_fits(const ControlNetConfig& controlnet, const UNet2DConditionConfig& unet,
                           const std::string& name);

}  // namespace kosmosg::models
