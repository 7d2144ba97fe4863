#pragma once
// The torchscale / fairseq transformer blocks Kosmos-G is built from (MLLM, AlignerNet, the
// XConnector's and the ViT's attention), registered under the upstream parameter names.
// Tensors are batch-first ([B, L, C]); upstream works time-first, which changes no value.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "kosmosg/nn/linear.h"

namespace kosmosg::nn {

// Sizes and switches of the blocks of one transformer stack.
struct TransformerOptions {
  int64_t embed_dim = 0;
  int64_t heads = 0;
  int64_t ffn_dim = 0;
  bool subln = true;               // inner_attn_ln before out_proj, ffn_layernorm before fc2
  double layer_norm_eps = 1e-5;
  double dropout = 0;              // on each residual branch (attention and FFN outputs)
  double attention_dropout = 0;    // on the attention weights
  double activation_dropout = 0;   // after the FFN activation
};

// Attention with separate q/k/v/out projections (all with bias) and, when `inner_ln`, the
// Magneto sub-LayerNorm `inner_attn_ln` on the merged heads before out_proj.
class MultiheadAttentionImpl : public torch::nn::Module {
 public:
  MultiheadAttentionImpl(int64_t embed_dim, int64_t heads, bool inner_ln, double layer_norm_eps,
                         double attention_dropout);
  // query [B, Lq, C], key/value [B, Lk, C]; key_padding_mask [B, Lk] bool (true = ignore that
  // key) or undefined; `causal` hides later keys. Returns [B, Lq, C].
  at::Tensor forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                     const at::Tensor& key_padding_mask = {}, bool causal = false);

  Linear k_proj{nullptr}, v_proj{nullptr}, q_proj{nullptr}, out_proj{nullptr};
  torch::nn::LayerNorm inner_attn_ln{nullptr};

 private:
  int64_t heads_;
  double attention_dropout_;
};
TORCH_MODULE(MultiheadAttention);

// fc1 -> GELU (exact erf, computed in float32) -> activation dropout -> ffn_layernorm (sub-LN)
// -> fc2 -> dropout.
class FeedForwardNetworkImpl : public torch::nn::Module {
 public:
  explicit FeedForwardNetworkImpl(const TransformerOptions& options);
  at::Tensor forward(const at::Tensor& x);

  Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::LayerNorm ffn_layernorm{nullptr};

 private:
  TransformerOptions options_;
};
TORCH_MODULE(FeedForwardNetwork);

// Pre-LN encoder layer: x += drop(self_attn(self_attn_layer_norm(x))); x += ffn(final_layer_norm(x)).
class EncoderLayerImpl : public torch::nn::Module {
 public:
  explicit EncoderLayerImpl(const TransformerOptions& options);
  // x [B, L, C]; padding_mask [B, L] bool (true = pad) masks the keys, or undefined.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& padding_mask = {});

  MultiheadAttention self_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr};
  FeedForwardNetwork ffn{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};

 private:
  double dropout_;
};
TORCH_MODULE(EncoderLayer);

// Pre-LN decoder layer: self-attention, then (when built with `cross_attention`) attention to a
// memory through encoder_attn / encoder_attn_layer_norm (no sub-LN there), then the FFN.
class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const TransformerOptions& options, bool cross_attention);
  // x [B, L, C]; `causal` for the self-attention; memory [B, M, C] with memory_padding_mask
  // [B, M] (true = pad) for the cross-attention (required iff the layer has one).
  at::Tensor forward(const at::Tensor& x, bool causal, const at::Tensor& memory = {},
                     const at::Tensor& memory_padding_mask = {});

  MultiheadAttention self_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr};
  MultiheadAttention encoder_attn{nullptr};
  torch::nn::LayerNorm encoder_attn_layer_norm{nullptr};
  FeedForwardNetwork ffn{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};

 private:
  double dropout_;
};
TORCH_MODULE(DecoderLayer);

// Magneto sub-LN initialisation: multiplies every parameter (weights and biases) of `module`
// whose name contains fc1, fc2, out_proj or v_proj by `scale`, skipping names containing `skip`.
void subln_rescale(torch::nn::Module& module, double scale, const std::string& skip = "");

}  // namespace kosmosg::nn
