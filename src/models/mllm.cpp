#include "kosmosg/models/mllm.h"

#include <cmath>

#include "kosmosg/nn/linear.h"
#include "kosmosg/nn/norms.h"
#include "kosmosg/nn/positions.h"
#include "models/config_checks.h"

namespace kosmosg::models {
namespace {

// Vocabularies are larger than other sizes (Kosmos-G's has 64,007 entries).
constexpr int64_t kMaxVocabSize = 1 << 20;

}  // namespace

MLLMConfig MLLMConfig::from_json(const io::Json& json, const std::string& what) {
  using io::config_value;
  MLLMConfig c;
  c.vocab_size = config_value<int64_t>(json, "vocab_size", c.vocab_size, what);
  c.embed_dim = config_value<int64_t>(json, "decoder_embed_dim", c.embed_dim, what);
  c.heads = config_value<int64_t>(json, "decoder_attention_heads", c.heads, what);
  c.ffn_dim = config_value<int64_t>(json, "decoder_ffn_embed_dim", c.ffn_dim, what);
  c.layers = config_value<int64_t>(json, "decoder_layers", c.layers, what);
  c.padding_idx = config_value<int64_t>(
      json, "padding_idx", config_value<int64_t>(json, "pad", c.padding_idx, what), what);
  const bool no_scale = config_value<bool>(json, "no_scale_embedding", false, what);
  c.embed_scale = no_scale ? 1.0
                           : config_value<double>(json, "embed_scale",
                                                  std::sqrt(static_cast<double>(c.embed_dim)), what);
  c.dropout = config_value<double>(json, "dropout", c.dropout, what);
  const bool fused = config_value<bool>(json, "flash_attention", true, what);
  c.attention_dropout = fused ? 0.0 : config_value<double>(json, "attention_dropout", 0.1, what);
  c.activation_dropout = config_value<double>(json, "activation_dropout", c.activation_dropout, what);
  c.subln = config_value<bool>(json, "subln", c.subln, what);
  c.layer_norm_eps = config_value<double>(json, "layer_norm_eps", c.layer_norm_eps, what);

  detail::require_positive(c.vocab_size, "vocab_size", what, false, kMaxVocabSize);
  detail::require_positive(c.embed_dim, "decoder_embed_dim", what);
  detail::require_positive(c.ffn_dim, "decoder_ffn_embed_dim", what);
  detail::require_positive(c.layers, "decoder_layers", what, /*allow_zero=*/true);
  detail::require_heads(c.embed_dim, c.heads, what);
  if (c.padding_idx < 0 || c.padding_idx >= c.vocab_size)
    fail(what, "padding index " + std::to_string(c.padding_idx) + " is outside the vocabulary of " +
                   std::to_string(c.vocab_size));
  detail::require_probability(c.dropout, "dropout", what);
  detail::require_probability(c.attention_dropout, "attention_dropout", what);
  detail::require_probability(c.activation_dropout, "activation_dropout", what);
  detail::require_setting(json, "activation_fn", "gelu", what);
  detail::require_setting(json, "decoder_normalize_before", true, what);
  detail::require_setting(json, "deepnorm", false, what);
  detail::require_setting(json, "layernorm_embedding", false, what);
  detail::require_setting(json, "decoder_learned_pos", false, what);
  detail::require_setting(json, "no_token_positional_embeddings", false, what);
  detail::require_setting(json, "share_decoder_input_output_embed", true, what);
  detail::require_setting(json, "rel_pos_buckets", 0, what);
  detail::require_setting(json, "max_rel_pos", 0, what);
  detail::require_setting(json, "max_chunk_emb", 0, what);
  detail::require_setting(json, "segment_emb", false, what);
  return c;
}

nn::TransformerOptions MLLMConfig::transformer() const {
  nn::TransformerOptions o;
  o.embed_dim = embed_dim;
  o.heads = heads;
  o.ffn_dim = ffn_dim;
  o.subln = subln;
  o.layer_norm_eps = layer_norm_eps;
  o.dropout = dropout;
  o.attention_dropout = attention_dropout;
  o.activation_dropout = activation_dropout;
  return o;
}

LMDecoderImpl::LMDecoderImpl(const MLLMConfig& config) : config_(config) {
  embed_tokens = register_module(
      "embed_tokens", torch::nn::Embedding(torch::nn::EmbeddingOptions(config.vocab_size, config.embed_dim)
                                               .padding_idx(config.padding_idx)));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.layers; ++i)
    layers->push_back(nn::DecoderLayer(config.transformer(), /*cross_attention=*/false));
  layer_norm = register_module(
      "layer_norm", nn::layer_norm(config.embed_dim, config.layer_norm_eps));

  torch::NoGradGuard no_grad;
  embed_tokens->weight.normal_(0.0, 1.0 / std::sqrt(static_cast<double>(config.embed_dim)));
  embed_tokens->weight[config.padding_idx].zero_();
  if (config.subln && config.layers > 0)
    nn::subln_rescale(*layers, std::sqrt(std::log(2.0 * static_cast<double>(config.layers))));
}

MLLMOutput LMDecoderImpl::forward(const at::Tensor& src_tokens, const at::Tensor& img_features,
                                  const at::Tensor& img_gpt_input_mask, bool compute_logits) {
  const auto device = embed_tokens->weight.device();
  if (src_tokens.dim() != 2) fail("mllm", "src_tokens must be [B, T], found " + std::to_string(src_tokens.dim()) + " dims");
  // Shapes: B prompts of T tokens, width D (decoder_embed_dim), V the vocabulary, N image slots in all.
  auto tokens = src_tokens.to(device, at::kLong);  // [B, T]
  auto embedded = embed_tokens(tokens);             // [B, T, D]
  at::Tensor mask;
  if (img_gpt_input_mask.defined()) {
    if (img_gpt_input_mask.sizes() != src_tokens.sizes())
      fail("mllm", "img_gpt_input_mask must have the shape of src_tokens [" +
                       std::to_string(src_tokens.size(0)) + ", " + std::to_string(src_tokens.size(1)) + "]");
    mask = img_gpt_input_mask.to(device).ne(0);
  }
  const int64_t slots = mask.defined() ? mask.sum().item<int64_t>() : 0;
  const int64_t given = img_features.defined() ? img_features.size(0) : 0;
  if (img_features.defined() &&
      (img_features.dim() != 2 || img_features.size(1) != config_.embed_dim))
    fail("mllm", "img_features must be [N, " + std::to_string(config_.embed_dim) + "]");
  if (slots != given)
    fail("mllm", "img_gpt_input_mask marks " + std::to_string(slots) + " image slots but " +
                     std::to_string(given) + " image feature rows were given");
  // The image features [N, D] take the places of the <image> tokens the mask marks, in order.
  if (slots > 0)
    embedded = embedded.masked_scatter(mask.unsqueeze(-1), img_features.to(embedded.dtype()));

  auto x = embedded * config_.embed_scale +
           nn::fairseq_sinusoidal_positions(tokens, config_.embed_dim, config_.padding_idx, embedded);  // [B, T, D]
  x = at::dropout(x, config_.dropout, is_training());
  for (const auto& layer : *layers) {
    auto* l = layer->as<nn::DecoderLayerImpl>();
    x = checkpointing.run(*this, *l, [l](const at::Tensor& h) { return l->forward(h, /*causal=*/true); }, x);
  }  // [B, T, D] through every causal layer
  MLLMOutput out;
  out.hidden = layer_norm(x);  // [B, T, D]
  // The LM head is tied to the token embedding, as in the official checkpoint.
  if (compute_logits) out.logits = nn::linear(out.hidden, embed_tokens->weight);  // [B, T, V]
  return out;
}

GPTModelImpl::GPTModelImpl(const MLLMConfig& config) : config_(config) {
  decoder = register_module("decoder", LMDecoder(config));
}

MLLMOutput GPTModelImpl::forward(const at::Tensor& src_tokens, const at::Tensor& img_features,
                                 const at::Tensor& img_gpt_input_mask, bool compute_logits) {
  return decoder->forward(src_tokens, img_features, img_gpt_input_mask, compute_logits);
}

void GPTModelImpl::set_gradient_checkpointing(bool on, bool reentrant_compat) {
  decoder->checkpointing = {on, reentrant_compat};
}

void GPTModelImpl::load(const io::TensorMap& weights, const io::LoadOptions& options) {
  const std::string embedding = "decoder.embed_tokens.weight";
  const std::string head = "decoder.output_projection.weight";
  io::TensorMap resolved = weights;
  auto h = resolved.find(head);
  if (h != resolved.end()) {
    auto e = resolved.find(embedding);
    if (e == resolved.end()) {
      resolved.emplace(embedding, h->second);
    } else if (e->second.sizes() != h->second.sizes() ||
               !at::equal(e->second, h->second.to(e->second.scalar_type()))) {
      fail("load_weights", options.source_name + ": " + embedding + " and " + head +
                               " differ, but the LM head is tied to the token embedding");
    }
    resolved.erase(head);
  }
  io::LoadOptions o = options;
  o.ignorable_suffixes.push_back("decoder.embed_positions._float_tensor");
  o.ignorable_suffixes.push_back("decoder.self_attn_sope.scale");
  io::load_weights(*this, resolved, o);
}

}  // namespace kosmosg::models
