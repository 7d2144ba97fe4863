#pragma once
// facebookresearch/dino's VisionTransformer (the DreamBench DINO backbone, dino_vits16), with
// that repository's parameter names.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "kosmosg/io/config.h"
#include "kosmosg/nn/linear.h"

namespace kosmosg::models {

// The VisionTransformer constructor arguments; defaults are those of dino_vits16.
struct DinoViTConfig {
  int64_t img_size = 224;
  int64_t patch_size = 16;
  int64_t in_chans = 3;
  int64_t embed_dim = 384;
  int64_t depth = 12;
  int64_t num_heads = 6;
  double mlp_ratio = 4.0;
  bool qkv_bias = true;
  double layer_norm_eps = 1e-6;

  // Reads those keys (img_size may be a one-element list, as in the DINO code); a classifier
  // head (num_classes > 0) is refused since DreamBench uses the bare CLS feature.
  static DinoViTConfig from_json(const io::Json& json, const std::string& what = "DinoViTConfig");
};

// `blocks.i`: x + proj(attn(norm1(x))), then x + fc2(gelu(fc1(norm2(x)))).
class DinoBlockImpl : public torch::nn::Module {
 public:
  explicit DinoBlockImpl(const DinoViTConfig& config);
  at::Tensor forward(const at::Tensor& x);

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  nn::Linear qkv{nullptr}, proj{nullptr};  // registered as attn.qkv, attn.proj
  nn::Linear fc1{nullptr}, fc2{nullptr};   // registered as mlp.fc1, mlp.fc2

 private:
  int64_t heads_;
};
TORCH_MODULE(DinoBlock);

// The DINO ViT. Position embeddings are used as stored, so inputs must be square images of
// img_size (other sizes would need DINO's bicubic position interpolation, not implemented).
class DinoViTImpl : public torch::nn::Module {
 public:
  explicit DinoViTImpl(const DinoViTConfig& config);
  // pixel_values [B, C, img_size, img_size] -> norm(blocks(tokens)) [B, 1 + patches, D].
  at::Tensor forward_features(const at::Tensor& pixel_values);
  // The CLS row of forward_features, [B, D]: the DreamBench DINO feature.
  at::Tensor forward(const at::Tensor& pixel_values);

  at::Tensor cls_token, pos_embed;
  torch::nn::Conv2d patch_proj{nullptr};  // registered as patch_embed.proj
  torch::nn::ModuleList blocks;
  torch::nn::LayerNorm norm{nullptr};

 private:
  DinoViTConfig config_;
};
TORCH_MODULE(DinoViT);

}  // namespace kosmosg::models
