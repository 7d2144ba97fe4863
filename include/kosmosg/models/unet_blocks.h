#pragma once
// The blocks diffusers' UNet2DConditionModel, ControlNetModel and AutoencoderKL are built from
// (v0.21.4 semantics). Submodules are public and named as in diffusers, so that a training stage
// can freeze, checkpoint or hook them as modules; the registered names are the state-dict names.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <vector>

#include "kosmosg/nn/lora.h"

namespace kosmosg::models::blocks {

// The activations diffusers' get_activation knows ("silu"/"swish", "mish", "gelu", "relu").
enum class Activation { SiLU, Mish, GELU, ReLU };

// diffusers TimestepEmbedding: linear_1 → act → linear_2 (→ optional post activation).
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_dim, int64_t dim, Activation act,
                        std::optional<Activation> post_act = std::nullopt);
  at::Tensor forward(const at::Tensor& features);

  nn::LoRACompatibleLinear linear_1{nullptr}, linear_2{nullptr};

 private:
  Activation act_;
  std::optional<Activation> post_act_;
};
TORCH_MODULE(TimestepEmbedding);

// What an attention layer looks like (diffusers `Attention`).
struct AttentionConfig {
  int64_t query_dim = 0;
  int64_t cross_attention_dim = 0;  // 0: keys/values come from the query input
  int64_t heads = 1;
  int64_t head_dim = 0;
  bool qkv_bias = false;
  bool upcast = false;      // scores in float32 for half-precision models
  int64_t norm_groups = 0;  // > 0: a `group_norm` before the projections (VAE form)
  double norm_eps = 1e-6;
};

// diffusers Attention: to_q/to_k/to_v/to_out.0 (+ group_norm) around kosmosg::nn::attention.
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionConfig& config);
  // Tokens [B, L, query_dim]; `context` [B, Lk, cross_attention_dim] or undefined (self).
  at::Tensor forward(const at::Tensor& tokens, const at::Tensor& context = {});
  // Spatial self-attention with residual (VAE mid block): [B, C, H, W] → same shape.
  at::Tensor forward_spatial(const at::Tensor& x);

  torch::nn::GroupNorm group_norm{nullptr};
  nn::LoRACompatibleLinear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  nn::LoRACompatibleLinear to_out_0{nullptr};  // registered as to_out.0

 private:
  AttentionConfig config_;
};
TORCH_MODULE(Attention);

// GEGLU feed-forward: ff.net.0.proj (dim → 2·4·dim), h·gelu(gate), ff.net.2 (4·dim → dim).
class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(int64_t dim, int64_t mult = 4);
  at::Tensor forward(const at::Tensor& x);

  nn::LoRACompatibleLinear proj{nullptr};  // net.0.proj
  nn::LoRACompatibleLinear out{nullptr};   // net.2
};
TORCH_MODULE(FeedForward);

// diffusers BasicTransformerBlock (layer_norm form): self-attn, cross-attn, GEGLU, pre-norm.
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, int64_t cross_dim,
                            bool only_cross_attention, bool upcast);
  at::Tensor forward(at::Tensor x, const at::Tensor& context);

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  Attention attn1{nullptr}, attn2{nullptr};
  FeedForward ff{nullptr};

 private:
  bool only_cross_;
};
TORCH_MODULE(BasicTransformerBlock);

// What a Transformer2DModel (continuous input) looks like.
struct TransformerConfig {
  int64_t channels = 0;
  int64_t heads = 1;
  int64_t layers = 1;
  int64_t cross_attention_dim = 0;
  int64_t norm_groups = 32;
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool upcast = false;
};

// diffusers Transformer2DModel: norm → proj_in → transformer_blocks → proj_out → + input.
// proj_in/proj_out are 1×1 convolutions unless use_linear_projection; both run as one GEMM
// over the channels-last tokens.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const TransformerConfig& config);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context);

  torch::nn::GroupNorm norm{nullptr};
  // Exactly one pair is set, registered as proj_in/proj_out.
  nn::LoRACompatibleConv proj_in_conv{nullptr}, proj_out_conv{nullptr};
  nn::LoRACompatibleLinear proj_in_linear{nullptr}, proj_out_linear{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};

 private:
  TransformerConfig config_;
};
TORCH_MODULE(Transformer2DModel);

// diffusers ResnetBlock2D (time_embedding_norm "default", pre-norm); temb_channels 0: none.
struct ResnetConfig {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t temb_channels = 0;
  int64_t groups = 32;
  double eps = 1e-6;
  Activation act = Activation::SiLU;
  double output_scale_factor = 1.0;
};

class ResnetBlock2DImpl : public torch::nn::Module {
 public:
  explicit ResnetBlock2DImpl(const ResnetConfig& config);
  // `temb`: the raw time embedding [B, temb_channels] (activated here), undefined when none.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb = {});

  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  nn::LoRACompatibleConv conv1{nullptr}, conv2{nullptr};
  nn::LoRACompatibleConv conv_shortcut{nullptr};    // only when the width changes
  nn::LoRACompatibleLinear time_emb_proj{nullptr};  // only with a time embedding

 private:
  ResnetConfig config_;
};
TORCH_MODULE(ResnetBlock2D);

// diffusers Downsample2D: 3×3 stride-2 `conv`; padding 0 pads right/bottom by one first (VAE).
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding);
  at::Tensor forward(const at::Tensor& x);

  nn::LoRACompatibleConv conv{nullptr};

 private:
  int64_t padding_;
};
TORCH_MODULE(Downsample2D);

// diffusers Upsample2D: nearest ×2 (or to `size`), then 3×3 `conv`.
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, int64_t out_channels);
  at::Tensor forward(const at::Tensor& x, std::optional<std::vector<int64_t>> size = std::nullopt);

  nn::LoRACompatibleConv conv{nullptr};
};
TORCH_MODULE(Upsample2D);

// Shared resnet settings of one UNet/VAE block.
struct BlockConfig {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t temb_channels = 0;
  int64_t layers = 1;
  int64_t groups = 32;
  double eps = 1e-5;
  Activation act = Activation::SiLU;
  double output_scale_factor = 1.0;
  // Cross-attention transformers after each resnet (CrossAttn* blocks, the UNet mid block).
  std::optional<TransformerConfig> transformer;
};

// CrossAttnDownBlock2D / DownBlock2D / DownEncoderBlock2D: resnets (+ attentions)
// (+ downsamplers.0). `downsample_padding` < 0: no downsampler.
class DownBlockImpl : public torch::nn::Module {
 public:
  DownBlockImpl(const BlockConfig& config, int64_t downsample_padding);
  // Appends one skip tensor per resnet and one after the downsampler to `skips` when given;
  // the result is the last of them.
  at::Tensor forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context,
                     std::vector<at::Tensor>* skips = nullptr);

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, downsamplers{nullptr};
};
TORCH_MODULE(DownBlock);

// UNetMidBlock2DCrossAttn (config.transformer set) or the VAE's UNetMidBlock2D (single-head
// spatial attention): resnets.0, then (attention, resnet) × config.layers.
class MidBlockImpl : public torch::nn::Module {
 public:
  explicit MidBlockImpl(const BlockConfig& config);
  at::Tensor forward(at::Tensor x, const at::Tensor& temb = {}, const at::Tensor& context = {});

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr};

 private:
  bool cross_;
};
TORCH_MODULE(MidBlock);

// CrossAttnUpBlock2D / UpBlock2D with skip connections (`prev_channels` > 0: the input has
// prev_channels, each resnet concatenates a skip tensor of out_channels, the last one of
// config.in_channels) or UpDecoderBlock2D (prev_channels 0: no skips, input has in_channels).
class UpBlockImpl : public torch::nn::Module {
 public:
  UpBlockImpl(const BlockConfig& config, int64_t prev_channels, bool add_upsample);
  // Pops one tensor from the back of `skips` per resnet (UNet form). `upsample_size` is the
  // spatial size the upsampler produces (default: twice the input).
  at::Tensor forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context,
                     std::vector<at::Tensor>* skips = nullptr,
                     std::optional<std::vector<int64_t>> upsample_size = std::nullopt);
  // Number of resnets (= skip tensors consumed in the UNet form).
  size_t size() const { return resnets->size(); }

  torch::nn::ModuleList resnets{nullptr}, attentions{nullptr}, upsamplers{nullptr};
};
TORCH_MODULE(UpBlock);

}  // namespace kosmosg::models::blocks
