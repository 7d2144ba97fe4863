#pragma once
// The Kosmos-G AlignerNet (`aligner`): M = encoder_proj (torchscale Encoder over the MLLM
// condition) + encoder (non-causal torchscale Decoder driven by `encoder_query`) maps [B, T, C]
// to CLIP-text-shaped [B, Q, W]; N = decoder (driven by `decoder_query`) + decoder_proj
// reconstructs the condition in the alignment stage. The CLIP text teacher is not part of it.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "kosmosg/io/config.h"
#include "kosmosg/nn/checkpoint.h"
#include "kosmosg/nn/linear.h"
#include "kosmosg/nn/transformer.h"

namespace kosmosg::models {

// AlignerNet sizes. Two layouts are read:
// - ours (flat, as in kosmosg-configs.json): encoder_embed_dim, encoder_attention_heads,
//   encoder_ffn_embed_dim, encoder_layers, decoder_* likewise, input_dim (MLLM width),
//   num_queries, max_positions, position_offset, rec_loss_scale_numerator, dropout,
//   attention_dropout, activation_dropout, subln, no_scale_embedding, layer_norm_eps;
// - upstream's: {"EncoderDecoderConfig": {torchscale keys as above}, "aligner_dim",
//   "decoder_embed_dim" (MLLM width), "encoder_query_num", "table_length"}.
// Omitted keys take the full-size values (torchscale encoder-decoder defaults).
struct AlignerConfig {
  int64_t input_dim = 2048;
  int64_t embed_dim = 768;
  int64_t encoder_layers = 12;
  int64_t encoder_heads = 12;
  int64_t encoder_ffn_dim = 3072;
  int64_t decoder_layers = 12;
  int64_t decoder_heads = 12;
  int64_t decoder_ffn_dim = 3072;
  int64_t num_queries = 77;
  int64_t max_positions = 32768;   // rows of both position tables and of decoder_query
  int64_t position_offset = 2;     // first position-table row used
  double rec_loss_scale_numerator = 77;  // rec_loss is scaled by this / T
  double embed_scale = 1;
  double dropout = 0;
  double attention_dropout = 0;
  double activation_dropout = 0;
  bool subln = true;
  double layer_norm_eps = 1e-5;

  // Parses either layout and validates; `what` names the config in errors.
  static AlignerConfig from_json(const io::Json& json, const std::string& what = "aligner config");
  // Block options of the encoder (encoder_proj, decoder_proj) and decoder (encoder, decoder) stacks.
  nn::TransformerOptions encoder_options() const;
  nn::TransformerOptions decoder_options() const;
  // Longest condition (T) the position tables allow.
  int64_t max_condition_length() const { return max_positions - position_offset; }
};

// A torchscale Encoder as the aligner builds it: optional `embed_tokens` Linear, learned
// `embed_positions` (rows offset..offset+T-1), pre-LN `layers`, `layer_norm`, optional
// `output_projection` Linear.
class TorchscaleEncoderImpl : public torch::nn::Module {
 public:
  TorchscaleEncoderImpl(const AlignerConfig& config, int64_t input_dim, int64_t output_dim);
  // x [B, T, input_dim or W]; padding_mask [B, T] bool (true = pad: zeroed and masked as keys)
  // or undefined. Returns [B, T, W] or [B, T, output_dim].
  at::Tensor forward(const at::Tensor& x, const at::Tensor& padding_mask = {});

  nn::Linear embed_tokens{nullptr};
  torch::nn::Embedding embed_positions{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm layer_norm{nullptr};
  nn::Linear output_projection{nullptr};
  nn::GradientCheckpointing checkpointing;  // per layer

 private:
  AlignerConfig config_;
};
TORCH_MODULE(TorchscaleEncoder);

// A non-causal torchscale Decoder without token or position embedding: `layers` (self-attention,
// cross-attention, FFN) and `layer_norm`.
class TorchscaleDecoderImpl : public torch::nn::Module {
 public:
  explicit TorchscaleDecoderImpl(const AlignerConfig& config);
  // queries [B, L, W] attend to memory [B, M, W] (memory_padding_mask [B, M], true = pad, or
  // undefined) -> [B, L, W].
  at::Tensor forward(const at::Tensor& queries, const at::Tensor& memory,
                     const at::Tensor& memory_padding_mask = {});

  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm layer_norm{nullptr};
  nn::GradientCheckpointing checkpointing;  // per layer

 private:
  AlignerConfig config_;
};
TORCH_MODULE(TorchscaleDecoder);

// M alone (upstream Aligner_encoder, instruction tuning and inference): encoder_proj,
// encoder_query, encoder.
class AlignerEncoderImpl : public torch::nn::Module {
 public:
  explicit AlignerEncoderImpl(const AlignerConfig& config);
  // condition [B, T, input_dim] (batch-first MLLM hidden states); padding_mask [B, T] nonzero at
  // pads (src_tokens == pad) or undefined -> [B, num_queries, W].
  at::Tensor forward(const at::Tensor& condition, const at::Tensor& padding_mask = {});
  // Checkpoints each layer of every stack in training, N's too in an Aligner (see
  // nn::checkpoint for `reentrant_compat`).
  void set_gradient_checkpointing(bool on, bool reentrant_compat = false);
  const AlignerConfig& config() const { return config_; }

  TorchscaleEncoder encoder_proj{nullptr};
  at::Tensor encoder_query;
  TorchscaleDecoder encoder{nullptr};

 protected:
  AlignerConfig config_;
};
TORCH_MODULE(AlignerEncoder);

// What the alignment-stage AlignerNet returns.
struct AlignerOutput {
  at::Tensor aligned;         // [B, Q, W], M's output
  at::Tensor reconstruction;  // [B, T, input_dim], N's output
  at::Tensor mse_loss;        // float32 scalar: mean (aligned - teacher)^2
  at::Tensor rec_loss;        // float32 scalar: mean (reconstruction - condition)^2 · numerator / T
};

// M and N (upstream Aligner in the alignment stage): adds decoder_query, decoder, decoder_proj.
class AlignerImpl : public AlignerEncoderImpl {
 public:
  explicit AlignerImpl(const AlignerConfig& config);
  // condition and padding_mask as for AlignerEncoder; teacher [B, Q, W] is the CLIP text
  // encoder's last hidden state for the same captions.
  AlignerOutput forward(const at::Tensor& condition, const at::Tensor& padding_mask,
                        const at::Tensor& teacher);

  at::Tensor decoder_query;
  TorchscaleDecoder decoder{nullptr};
  TorchscaleEncoder decoder_proj{nullptr};
};
TORCH_MODULE(Aligner);

}  // namespace kosmosg::models
