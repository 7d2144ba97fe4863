#pragma once
// The Kosmos-G XConnector (`img_connector`): image tokens -> `dense` -> cross-attention from
// `latent_query` to [projected image tokens; latent queries] (`x_attn`, no sub-LN, no mask).
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "kosmosg/io/config.h"
#include "kosmosg/nn/linear.h"
#include "kosmosg/nn/transformer.h"

namespace kosmosg::models {

// Keys: input_dim (ViT width), output_dim (MLLM width), latent_query_num,
// decoder_attention_heads, attention_dropout; omitted keys take the full-size values.
struct XConnectorConfig {
  int64_t input_dim = 1024;
  int64_t output_dim = 2048;
  int64_t latent_query_num = 64;
  int64_t heads = 32;
  double attention_dropout = 0.1;

  // Parses and validates; `what` names the config in errors.
  static XConnectorConfig from_json(const io::Json& json, const std::string& what = "connector config");
};

// `img_connector.*`: dense, latent_query, x_attn.{q,k,v,out}_proj.
class XConnectorImpl : public torch::nn::Module {
 public:
  explicit XConnectorImpl(const XConnectorConfig& config);
  // image_tokens [N, T, input_dim] -> [N, latent_query_num, output_dim]; flattened to
  // [N·Q, C] these rows fill the MLLM's image slots in order.
  at::Tensor forward(const at::Tensor& image_tokens);
  const XConnectorConfig& config() const { return config_; }

  nn::Linear dense{nullptr};
  at::Tensor latent_query;
  nn::MultiheadAttention x_attn{nullptr};

 private:
  XConnectorConfig config_;
};
TORCH_MODULE(XConnector);

}  // namespace kosmosg::models
