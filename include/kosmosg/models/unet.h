#pragma once
// Stable Diffusion's denoiser: diffusers' UNet2DConditionModel (v0.21.4 semantics), parameters
// under the diffusers state-dict names, built from a diffusers unet/config.json.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "kosmosg/io/config.h"
#include "kosmosg/models/unet_blocks.h"
#include "kosmosg/nn/checkpoint.h"
#include "kosmosg/nn/lora.h"

namespace kosmosg::models {

// The UNet2DConditionModel config keys that shape the network, with the class defaults for
// omitted keys. Per-block values are expanded to one entry per down block.
struct UNet2DConditionConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  int64_t sample_size = 0;  // latent side the model was trained at; 0 when null
  bool center_input_sample = false;
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  std::vector<std::string> down_block_types;  // CrossAttnDownBlock2D / DownBlock2D
  std::string mid_block_type;                 // UNetMidBlock2DCrossAttn, or "" for none
  std::vector<std::string> up_block_types;    // CrossAttnUpBlock2D / UpBlock2D
  std::vector<int64_t> block_out_channels;
  std::vector<int64_t> layers_per_block;
  // Heads per down block: num_attention_heads, or else attention_head_dim, which diffusers'
  // UNet reads as a head count. The mid block uses the last entry, up blocks the reverse.
  std::vector<int64_t> attention_heads;
  std::vector<int64_t> cross_attention_dim;
  std::vector<int64_t> transformer_layers_per_block;
  std::vector<bool> only_cross_attention;
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1;
  std::string act_fn = "silu";
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  std::string time_embedding_type = "positional";
  int64_t time_embedding_dim = 0;  // 0: 4 · block_out_channels[0]
  std::string timestep_post_act;   // "" when null
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;

  // Reads a diffusers config.json object. Keys this implementation cannot honour (class or
  // addition embeddings, Fourier time embedding, other block types, ...) are errors naming
  // the key; keys irrelevant to these blocks are ignored as diffusers ignores them.
  static UNet2DConditionConfig from_json(const io::Json& json);
};

// Additions to the skip tensors and mid-block output (ControlNet residuals), in the order of
// the UNet's skip tensors: conv_in output, then each down block's resnets and downsampler.
struct UNetResiduals {
  std::vector<at::Tensor> down;
  at::Tensor mid;
};

// diffusers UNet2DConditionModel: conv_in, time_embedding, down_blocks (blocks::DownBlock),
// mid_block, up_blocks (blocks::UpBlock), conv_norm_out, conv_out.
class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const UNet2DConditionConfig& config);

  // Noise prediction [B, out_channels, H, W] for `sample` [B, in_channels, H, W] at `timestep`
  // (0-dim, [1] or [B]; integer or float) given `encoder_hidden_states` [B, L, cross dim].
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timestep,
                     const at::Tensor& encoder_hidden_states,
                     const UNetResiduals* residuals = nullptr);
  // Checkpoints each down, mid and up block in training (see nn::checkpoint for
  // `reentrant_compat`).
  void set_gradient_checkpointing(bool on, bool reentrant_compat = false);
  // Stores the down, mid and up blocks' weights in `dtype` (bfloat16 or float16) and computes them
  // in float32 (nn::store_block_weights): inference with float32 inputs only.
  void store_block_weights(c10::ScalarType dtype);
  // Stores the convolution weights on CUDA channels-last (or back in NCHW) and runs inference
  // there in that layout, which cuDNN's tensor-core convolutions take without reordering. It pays
  // inside a CUDA graph; step by step its extra launches can cost more than it gains.
  void set_cuda_channels_last(bool on);

  const UNet2DConditionConfig& config() const { return config_; }

  nn::LoRACompatibleConv conv_in{nullptr};
  blocks::TimestepEmbedding time_embedding{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};
  blocks::MidBlock mid_block{nullptr};  // empty when mid_block_type is null
  torch::nn::ModuleList up_blocks{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  nn::LoRACompatibleConv conv_out{nullptr};
  nn::GradientCheckpointing checkpointing;

 private:
  UNet2DConditionConfig config_;
  bool cuda_channels_last_ = false;
};
TORCH_MODULE(UNet2DConditionModel);

// Expands the timestep argument of a UNet/ControlNet call to [batch]: 0-dim or [1] broadcast,
// [batch] kept; anything else is an error naming `what`.
at::Tensor broadcast_timesteps(const at::Tensor& timestep, int64_t batch, const std::string& what);

}  // namespace kosmosg::models
