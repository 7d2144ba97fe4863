#pragma once
// The Kosmos-G multimodal LLM (`gpt_model`, fairseq GPTmodel around a torchscale decoder):
// token embedding with image features written into the image slots, sqrt(C) scale, fairseq
// sinusoidal positions, causal pre-LN sub-LN decoder layers, final LayerNorm, tied LM head.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "kosmosg/io/config.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/nn/checkpoint.h"
#include "kosmosg/nn/transformer.h"

namespace kosmosg::models {

// MLLM sizes from the torchscale DecoderConfig / fairseq keys (decoder_embed_dim,
// decoder_attention_heads, decoder_ffn_embed_dim, decoder_layers, vocab_size, pad or
// padding_idx, embed_scale / no_scale_embedding, dropout, attention_dropout, flash_attention,
// activation_dropout, subln, layer_norm_eps); omitted keys take the kosmosg_xl values.
struct MLLMConfig {
  int64_t vocab_size = 64007;
  int64_t embed_dim = 2048;
  int64_t heads = 32;
  int64_t ffn_dim = 8192;
  int64_t layers = 24;
  int64_t padding_idx = 1;
  double embed_scale = 0;          // multiplies token and image embeddings
  double dropout = 0.1;
  double attention_dropout = 0;    // 0 under flash_attention, whose fused kernel drops nothing
  double activation_dropout = 0;
  bool subln = true;
  double layer_norm_eps = 1e-5;

  // Parses and validates; `what` names the config in errors.
  static MLLMConfig from_json(const io::Json& json, const std::string& what = "mllm config");
  // The per-layer block options.
  nn::TransformerOptions transformer() const;
};

// What the MLLM returns.
struct MLLMOutput {
  at::Tensor logits;  // [B, T, V]; undefined when not requested
  at::Tensor hidden;  // [B, T, C] after the final LayerNorm (upstream's time-first "condition", batch-first)
};

// `decoder.*`: embed_tokens, layers.N, layer_norm. output_projection is embed_tokens.weight.
class LMDecoderImpl : public torch::nn::Module {
 public:
  explicit LMDecoderImpl(const MLLMConfig& config);
  // See GPTModelImpl::forward.
  MLLMOutput forward(const at::Tensor& src_tokens, const at::Tensor& img_features = {},
                     const at::Tensor& img_gpt_input_mask = {}, bool compute_logits = true);

  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm layer_norm{nullptr};
  nn::GradientCheckpointing checkpointing;  // per decoder layer

 private:
  MLLMConfig config_;
};
TORCH_MODULE(LMDecoder);

// The `gpt_model` module: owns `decoder`.
class GPTModelImpl : public torch::nn::Module {
 public:
  explicit GPTModelImpl(const MLLMConfig& config);
  // src_tokens [B, T] (right-padded with padding_idx); img_features [N, C] written, in
  // row-major order, over the rows where img_gpt_input_mask [B, T] is nonzero (N must equal
  // their count). Attention is causal only: pads are not masked, as on upstream's fused path.
  MLLMOutput forward(const at::Tensor& src_tokens, const at::Tensor& img_features = {},
                     const at::Tensor& img_gpt_input_mask = {}, bool compute_logits = true);
  // Strict load of `decoder.*` names. Accepts the tied head under either name
  // (decoder.embed_tokens.weight / decoder.output_projection.weight; both must agree when both
  // are given) and ignores the unused buffers embed_positions._float_tensor and
  // self_attn_sope.scale.
  void load(const io::TensorMap& weights, const io::LoadOptions& options = {});
  // Checkpoints each decoder layer in training (see nn::checkpoint for `reentrant_compat`).
  void set_gradient_checkpointing(bool on, bool reentrant_compat = false);
  const MLLMConfig& config() const { return config_; }

  LMDecoder decoder{nullptr};

 private:
  MLLMConfig config_;
};
TORCH_MODULE(GPTModel);

}  // namespace kosmosg::models
