#pragma once
// The Kosmos-G image tower (`img_model`, open_clip ViT-L/14 as Kosmos-G modifies it): patchify,
// class token, learned positions, ln_pre, pre-LN blocks with torchscale attention (`ts_attn`)
// and QuickGELU MLP, ln_post on every token, each token L2-normalised. No projection.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "kosmosg/io/config.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/nn/checkpoint.h"
#include "kosmosg/nn/linear.h"
#include "kosmosg/nn/transformer.h"

namespace kosmosg::models {

// open_clip vision config keys: image_size, patch_size, width, layers, head_width (or heads),
// mlp_ratio, quick_gelu, layer_norm_eps; omitted keys take the ViT-L/14 values.
struct ViTConfig {
  int64_t image_size = 224;
  int64_t patch_size = 14;
  int64_t width = 1024;
  int64_t layers = 24;
  int64_t head_width = 64;
  double mlp_ratio = 4.0;
  bool quick_gelu = true;
  double layer_norm_eps = 1e-5;

  // Parses and validates; `what` names the config in errors.
  static ViTConfig from_json(const io::Json& json, const std::string& what = "vision config");
  int64_t heads() const { return width / head_width; }
  int64_t mlp_dim() const { return static_cast<int64_t>(static_cast<double>(width) * mlp_ratio); }
  // Output tokens per image: the class token plus (image_size / patch_size)^2 patches.
  int64_t tokens() const;
};

// `mlp`: c_fc -> QuickGELU (or erf GELU) -> c_proj.
class ViTMlpImpl : public torch::nn::Module {
 public:
  ViTMlpImpl(int64_t width, int64_t hidden, bool quick_gelu);
  at::Tensor forward(const at::Tensor& x);

  nn::Linear c_fc{nullptr}, c_proj{nullptr};

 private:
  bool quick_gelu_;
};
TORCH_MODULE(ViTMlp);

// `transformer.resblocks.N`: x += ts_attn(ln_1(x)); x += mlp(ln_2(x)).
class ViTBlockImpl : public torch::nn::Module {
 public:
  explicit ViTBlockImpl(const ViTConfig& config);
  at::Tensor forward(const at::Tensor& x);

  nn::MultiheadAttention ts_attn{nullptr};
  torch::nn::LayerNorm ln_1{nullptr};
  ViTMlp mlp{nullptr};
  torch::nn::LayerNorm ln_2{nullptr};
};
TORCH_MODULE(ViTBlock);

// `transformer`: holds `resblocks`.
class ViTTransformerImpl : public torch::nn::Module {
 public:
  explicit ViTTransformerImpl(const ViTConfig& config);
  at::Tensor forward(const at::Tensor& x);

  torch::nn::ModuleList resblocks{nullptr};
  nn::GradientCheckpointing checkpointing;  // per resblock
};
TORCH_MODULE(ViTTransformer);

// `visual`: pixel_values [N, 3, S, S] -> [N, tokens, width] after ln_post (not normalised).
class VisionTransformerImpl : public torch::nn::Module {
 public:
  explicit VisionTransformerImpl(const ViTConfig& config);
  at::Tensor forward(const at::Tensor& pixel_values);
  // Checkpoints each resblock in training (see nn::checkpoint for `reentrant_compat`).
  void set_gradient_checkpointing(bool on, bool reentrant_compat = false);

  torch::nn::Conv2d conv1{nullptr};
  at::Tensor class_embedding, positional_embedding;
  torch::nn::LayerNorm ln_pre{nullptr};
  ViTTransformer transformer{nullptr};
  torch::nn::LayerNorm ln_post{nullptr};

 private:
  ViTConfig config_;
};
TORCH_MODULE(VisionTransformer);

// `img_model` (upstream ClipVisualOnly): owns `visual`.
class ClipVisualOnlyImpl : public torch::nn::Module {
 public:
  explicit ClipVisualOnlyImpl(const ViTConfig& config);
  // pixel_values [N, 3, S, S] (CLIP-normalised) -> [N, tokens, width], every token divided by
  // max(‖token‖, 1e-12). Batch-first; upstream returns the same values time-first.
  at::Tensor forward(const at::Tensor& pixel_values);
  // Strict load of `visual.*` names. With `ignore_unused_attn`, the unused open_clip
  // `visual.transformer.resblocks.N.attn.{in_proj_weight,in_proj_bias,out_proj.*}` entries some
  // files carry are skipped; every other unknown name is still an error.
  void load(const io::TensorMap& weights, const io::LoadOptions& options = {},
            bool ignore_unused_attn = true);
  // Checkpoints each resblock in training (see nn::checkpoint for `reentrant_compat`).
  void set_gradient_checkpointing(bool on, bool reentrant_compat = false);
  const ViTConfig& config() const { return config_; }

  VisionTransformer visual{nullptr};

 private:
  ViTConfig config_;
};
TORCH_MODULE(ClipVisualOnly);

}  // namespace kosmosg::models
