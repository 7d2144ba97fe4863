#pragma once
// CLIP text and vision towers with the Hugging Face transformers (v4.34) parameter names, so a
// Stable Diffusion 1.5 `text_encoder/` folder or an HF CLIP checkpoint loads as it is.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <optional>
#include <string>

#include "kosmosg/io/config.h"
#include "kosmosg/nn/linear.h"
#include "kosmosg/nn/lora.h"

namespace kosmosg::models {

// The transformer sizes both towers share.
struct CLIPEncoderConfig {
  int64_t hidden_size = 512;
  int64_t intermediate_size = 2048;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 8;
  std::string hidden_act = "quick_gelu";  // "quick_gelu" (x·σ(1.702x)) or "gelu" (erf form)
  double layer_norm_eps = 1e-5;
};

// transformers' CLIPTextConfig (config.json keys, v4.34 defaults).
struct CLIPTextConfig {
  CLIPEncoderConfig encoder;
  int64_t vocab_size = 49408;
  int64_t max_position_embeddings = 77;
  int64_t eos_token_id = 49407;  // 2 in SD1.5's legacy config: pooling then takes argmax of the ids
  int64_t projection_dim = 512;

  // Reads the keys of a CLIPTextModel config.json (or CLIPConfig's "text_config"); `what` names
  // the origin in errors.
  static CLIPTextConfig from_json(const io::Json& json, const std::string& what = "CLIPTextConfig");
};

// transformers' CLIPVisionConfig (config.json keys, v4.34 defaults).
struct CLIPVisionConfig {
  CLIPEncoderConfig encoder{768, 3072, 12, 12, "quick_gelu", 1e-5};
  int64_t image_size = 224;
  int64_t patch_size = 32;
  int64_t num_channels = 3;
  int64_t projection_dim = 512;

  static CLIPVisionConfig from_json(const io::Json& json,
                                    const std::string& what = "CLIPVisionConfig");
};

// transformers' CLIPConfig: both towers plus the shared projection size.
struct CLIPConfig {
  CLIPTextConfig text;
  CLIPVisionConfig vision;
  int64_t projection_dim = 512;
  double logit_scale_init_value = 2.6592;

  // Reads "text_config", "vision_config", "projection_dim", "logit_scale_init_value".
  static CLIPConfig from_json(const io::Json& json, const std::string& what = "CLIPConfig");
};

// `self_attn`: q/k/v/out projections with bias over all heads.
class CLIPAttentionImpl : public torch::nn::Module {
 public:
  CLIPAttentionImpl(int64_t hidden_size, int64_t heads);
  // x [B, L, D]; `causal` hides later keys, `mask` is a bool keep-mask or additive bias
  // broadcastable to [B, H, L, L].
  at::Tensor forward(const at::Tensor& x, bool causal, const std::optional<at::Tensor>& mask);

  nn::LoRACompatibleLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};

 private:
  int64_t heads_;
};
TORCH_MODULE(CLIPAttention);

// `mlp`: fc1 → activation → fc2.
class CLIPMLPImpl : public torch::nn::Module {
 public:
  explicit CLIPMLPImpl(const CLIPEncoderConfig& config);
  at::Tensor forward(const at::Tensor& x);

  nn::LoRACompatibleLinear fc1{nullptr}, fc2{nullptr};

 private:
  bool quick_gelu_;
};
TORCH_MODULE(CLIPMLP);

// `encoder.layers.i`: pre-LayerNorm attention and MLP blocks with residuals.
class CLIPEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderLayerImpl(const CLIPEncoderConfig& config);
  at::Tensor forward(const at::Tensor& x, bool causal, const std::optional<at::Tensor>& mask);

  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  CLIPAttention self_attn{nullptr};
  CLIPMLP mlp{nullptr};
};
TORCH_MODULE(CLIPEncoderLayer);

// `encoder`: the stack of layers, used by both towers.
class CLIPEncoderImpl : public torch::nn::Module {
 public:
  explicit CLIPEncoderImpl(const CLIPEncoderConfig& config);
  at::Tensor forward(at::Tensor x, bool causal, const std::optional<at::Tensor>& mask);

  torch::nn::ModuleList layers;
};
TORCH_MODULE(CLIPEncoder);

// What the text tower returns.
struct CLIPTextOutput {
  at::Tensor last_hidden_state;  // [B, L, D] after final_layer_norm (SD1.5's conditioning)
  at::Tensor pooler_output;      // [B, D]: last_hidden_state at each row's first eos
};

// `text_model.embeddings`: token plus learned position embeddings.
class CLIPTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit CLIPTextEmbeddingsImpl(const CLIPTextConfig& config);
  at::Tensor forward(const at::Tensor& input_ids);

  torch::nn::Embedding token_embedding{nullptr}, position_embedding{nullptr};
};
TORCH_MODULE(CLIPTextEmbeddings);

// `text_model`: embeddings, causal encoder, final_layer_norm, eos pooling.
class CLIPTextTransformerImpl : public torch::nn::Module {
 public:
  explicit CLIPTextTransformerImpl(const CLIPTextConfig& config);
  // input_ids [B, L ≤ max_position_embeddings] int; attention_mask [B, L] (1 = token, 0 = pad)
  // or undefined. Without a mask pad positions are ordinary causal positions, as SD1.5 runs it.
  CLIPTextOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {});

  CLIPTextEmbeddings embeddings{nullptr};
  CLIPEncoder encoder{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};

 private:
  CLIPTextConfig config_;
};
TORCH_MODULE(CLIPTextTransformer);

// transformers' CLIPTextModel (SD1.5's text_encoder): registers "text_model".
class CLIPTextModelImpl : public torch::nn::Module {
 public:
  explicit CLIPTextModelImpl(const CLIPTextConfig& config);
  CLIPTextOutput forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {});
  const CLIPTextConfig& config() const { return config_; }

  CLIPTextTransformer text_model{nullptr};

 private:
  CLIPTextConfig config_;
};
TORCH_MODULE(CLIPTextModel);

// CLIPTextModelWithProjection's outputs.
struct CLIPTextProjectionOutput {
  at::Tensor text_embeds;  // [B, projection_dim], not normalised
  at::Tensor last_hidden_state;
  at::Tensor pooler_output;
};

// transformers' CLIPTextModelWithProjection: text_model plus bias-free text_projection.
class CLIPTextModelWithProjectionImpl : public torch::nn::Module {
 public:
  explicit CLIPTextModelWithProjectionImpl(const CLIPTextConfig& config);
  CLIPTextProjectionOutput forward(const at::Tensor& input_ids,
                                   const at::Tensor& attention_mask = {});

  CLIPTextTransformer text_model{nullptr};
  nn::Linear text_projection{nullptr};
};
TORCH_MODULE(CLIPTextModelWithProjection);

// `vision_model.embeddings`: bias-free patch conv, class token, learned positions.
class CLIPVisionEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit CLIPVisionEmbeddingsImpl(const CLIPVisionConfig& config);
  // pixel_values [B, C, image_size, image_size] -> [B, 1 + patches, D]
  at::Tensor forward(const at::Tensor& pixel_values);

  at::Tensor class_embedding;
  torch::nn::Conv2d patch_embedding{nullptr};
  torch::nn::Embedding position_embedding{nullptr};

 private:
  CLIPVisionConfig config_;
};
TORCH_MODULE(CLIPVisionEmbeddings);

// What the vision tower returns.
struct CLIPVisionOutput {
  at::Tensor last_hidden_state;  // [B, 1 + patches, D], encoder output without a final norm
  at::Tensor pooler_output;      // [B, D] = post_layernorm(last_hidden_state[:, 0])
};

// `vision_model`: embeddings, pre_layrnorm (sic), encoder, post_layernorm on the class row.
class CLIPVisionTransformerImpl : public torch::nn::Module {
 public:
  explicit CLIPVisionTransformerImpl(const CLIPVisionConfig& config);
  CLIPVisionOutput forward(const at::Tensor& pixel_values);

  CLIPVisionEmbeddings embeddings{nullptr};
  torch::nn::LayerNorm pre_layrnorm{nullptr};
  CLIPEncoder encoder{nullptr};
  torch::nn::LayerNorm post_layernorm{nullptr};
};
TORCH_MODULE(CLIPVisionTransformer);

// CLIPVisionModelWithProjection's outputs.
struct CLIPVisionProjectionOutput {
  at::Tensor image_embeds;  // [B, projection_dim], not normalised
  at::Tensor last_hidden_state;
  at::Tensor pooler_output;
};

// transformers' CLIPVisionModelWithProjection: vision_model plus bias-free visual_projection.
class CLIPVisionModelWithProjectionImpl : public torch::nn::Module {
 public:
  explicit CLIPVisionModelWithProjectionImpl(const CLIPVisionConfig& config);
  CLIPVisionProjectionOutput forward(const at::Tensor& pixel_values);

  CLIPVisionTransformer vision_model{nullptr};
  nn::Linear visual_projection{nullptr};
};
TORCH_MODULE(CLIPVisionModelWithProjection);

// transformers' CLIPModel (e.g. openai/clip-vit-base-patch32, the DreamBench CLIP-I/CLIP-T model).
class CLIPModelImpl : public torch::nn::Module {
 public:
  explicit CLIPModelImpl(const CLIPConfig& config);
  // text_projection(pooled text row) [B, projection_dim]; attention_mask as CLIPProcessor's.
  at::Tensor get_text_features(const at::Tensor& input_ids, const at::Tensor& attention_mask = {});
  // visual_projection(pooled image row) [B, projection_dim].
  at::Tensor get_image_features(const at::Tensor& pixel_values);

  CLIPTextTransformer text_model{nullptr};
  CLIPVisionTransformer vision_model{nullptr};
  nn::Linear text_projection{nullptr}, visual_projection{nullptr};
  at::Tensor logit_scale;  // 0-dim, log of the contrastive temperature's inverse
};
TORCH_MODULE(CLIPModel);

// A CLIPTextModel from a transformers folder (config.json + model.safetensors), loaded strictly.
CLIPTextModel load_clip_text_model(const std::string& folder);

}  // namespace kosmosg::models
