#include "kosmosg/models/connector.h"

#include <cmath>

#include "models/config_checks.h"

namespace kosmosg::models {

XConnectorConfig XConnectorConfig::from_json(const io::Json& json, const std::string& what) {
  using io::config_value;
  XConnectorConfig c;
  c.input_dim = config_value<int64_t>(json, "input_dim", c.input_dim, what);
  c.output_dim = config_value<int64_t>(json, "output_dim", c.output_dim, what);
  c.latent_query_num = config_value<int64_t>(json, "latent_query_num", c.latent_query_num, what);
  c.heads = config_value<int64_t>(json, "decoder_attention_heads", c.heads, what);
  c.attention_dropout = config_value<double>(json, "attention_dropout", c.attention_dropout, what);
  detail::require_positive(c.input_dim, "input_dim", what);
  detail::require_positive(c.output_dim, "output_dim", what);
  detail::require_positive(c.latent_query_num, "latent_query_num", what);
  detail::require_heads(c.output_dim, c.heads, what);
  detail::require_probability(c.attention_dropout, "attention_dropout", what);
  detail::require_setting(json, "connector", "xconnector", what);
  detail::require_setting(json, "kv_includes_queries", true, what);
  return c;
}

XConnectorImpl::XConnectorImpl(const XConnectorConfig& config) : config_(config) {
  dense = register_module("dense", nn::Linear(config.input_dim, config.output_dim));
  latent_query = register_parameter("latent_query", torch::randn({config.latent_query_num, config.output_dim}));
  x_attn = register_module("x_attn", nn::MultiheadAttention(config.output_dim, config.heads, /*inner_ln=*/false,
                                                            1e-5, config.attention_dropout));
  // fairseq's MultiheadAttention initialisation for separate q/k/v projections.
  torch::NoGradGuard no_grad;
  const double gain = 1.0 / std::sqrt(2.0);
  for (auto* proj : {&x_attn->q_proj, &x_attn->k_proj, &x_attn->v_proj})
    torch::nn::init::xavier_uniform_((*proj)->weight, gain);
  torch::nn::init::xavier_uniform_(x_attn->out_proj->weight);
  x_attn->out_proj->bias.zero_();
}

at::Tensor XConnectorImpl::forward(const at::Tensor& image_tokens) {
  if (image_tokens.dim() != 3 || image_tokens.size(2) != config_.input_dim)
    fail("xconnector", "image tokens must be [N, T, " + std::to_string(config_.input_dim) + "], found " +
                           std::to_string(image_tokens.dim()) + " dims");
  auto x = dense(image_tokens.to(dense->weight.device(), dense->weight.scalar_type()));
  const int64_t n = x.size(0);
  auto queries = latent_query.unsqueeze(0).expand({n, config_.latent_query_num, config_.output_dim});
  auto kv = at::cat({x, queries}, 1);
  return x_attn(queries, kv, kv);
}

}  // namespace kosmosg::models
