#include "kosmosg/nn/transformer.h"

#include "kosmosg/error.h"
#include "kosmosg/nn/attention.h"
#include "kosmosg/nn/norms.h"

namespace kosmosg::nn {

MultiheadAttentionImpl::MultiheadAttentionImpl(int64_t embed_dim, int64_t heads, bool inner_ln,
                                               double layer_norm_eps, double attention_dropout)
    : heads_(heads), attention_dropout_(attention_dropout) {
  if (heads <= 0 || embed_dim % heads != 0)
    fail("attention", "width " + std::to_string(embed_dim) + " is not divisible into " +
                          std::to_string(heads) + " heads");
  k_proj = register_module("k_proj", Linear(embed_dim, embed_dim));
  v_proj = register_module("v_proj", Linear(embed_dim, embed_dim));
  q_proj = register_module("q_proj", Linear(embed_dim, embed_dim));
  out_proj = register_module("out_proj", Linear(embed_dim, embed_dim));
  if (inner_ln) inner_attn_ln = register_module("inner_attn_ln", layer_norm(embed_dim, layer_norm_eps));
}

at::Tensor MultiheadAttentionImpl::forward(const at::Tensor& query, const at::Tensor& key,
                                           const at::Tensor& value,
                                           const at::Tensor& key_padding_mask, bool causal) {
  AttentionOptions options;
  options.causal = causal;
  options.dropout = is_training() ? attention_dropout_ : 0.0;
  if (key_padding_mask.defined()) {
    if (key_padding_mask.dim() != 2 || key_padding_mask.size(0) != key.size(0) ||
        key_padding_mask.size(1) != key.size(1))
      fail("attention", "key padding mask: found shape " + c10::str(key_padding_mask.sizes()) +
                            ", expected [" + std::to_string(key.size(0)) + ", " +
                            std::to_string(key.size(1)) + "]");
    options.mask = key_padding_mask.to(at::kBool).logical_not().view(
        {key.size(0), 1, 1, key.size(1)});
  }
  auto q = split_heads(q_proj(query), heads_);
  auto k = split_heads(k_proj(key), heads_);
  auto v = split_heads(v_proj(value), heads_);
  auto out = merge_heads(attention(q, k, v, options));
  if (inner_attn_ln) out = inner_attn_ln(out);
  return out_proj(out);
}

FeedForwardNetworkImpl::FeedForwardNetworkImpl(const TransformerOptions& options)
    : options_(options) {
  fc1 = register_module("fc1", Linear(options.embed_dim, options.ffn_dim));
  fc2 = register_module("fc2", Linear(options.ffn_dim, options.embed_dim));
  if (options.subln)
    ffn_layernorm = register_module("ffn_layernorm", layer_norm(options.ffn_dim, options.layer_norm_eps));
}

at::Tensor FeedForwardNetworkImpl::forward(const at::Tensor& x) {
  auto h = fc1(x);
  // Upstream evaluates the activation in float32 and casts back (matters under fp16).
  h = at::gelu(h.to(at::kFloat)).to(h.scalar_type());
  h = at::dropout(h, options_.activation_dropout, is_training());
  if (ffn_layernorm) h = ffn_layernorm(h);
  return at::dropout(fc2(h), options_.dropout, is_training());
}

EncoderLayerImpl::EncoderLayerImpl(const TransformerOptions& options) : dropout_(options.dropout) {
  self_attn = register_module(
      "self_attn", MultiheadAttention(options.embed_dim, options.heads, options.subln,
                                      options.layer_norm_eps, options.attention_dropout));
  self_attn_layer_norm =
      register_module("self_attn_layer_norm", layer_norm(options.embed_dim, options.layer_norm_eps));
  ffn = register_module("ffn", FeedForwardNetwork(options));
  final_layer_norm =
      register_module("final_layer_norm", layer_norm(options.embed_dim, options.layer_norm_eps));
}

at::Tensor EncoderLayerImpl::forward(const at::Tensor& x, const at::Tensor& padding_mask) {
  auto h = self_attn_layer_norm(x);
  auto y = x + at::dropout(self_attn(h, h, h, padding_mask), dropout_, is_training());
  return y + ffn(final_layer_norm(y));
}

DecoderLayerImpl::DecoderLayerImpl(const TransformerOptions& options, bool cross_attention)
    : dropout_(options.dropout) {
  self_attn = register_module(
      "self_attn", MultiheadAttention(options.embed_dim, options.heads, options.subln,
                                      options.layer_norm_eps, options.attention_dropout));
  self_attn_layer_norm =
      register_module("self_attn_layer_norm", layer_norm(options.embed_dim, options.layer_norm_eps));
  if (cross_attention) {
    encoder_attn = register_module(
        "encoder_attn", MultiheadAttention(options.embed_dim, options.heads, /*inner_ln=*/false,
                                           options.layer_norm_eps, options.attention_dropout));
    encoder_attn_layer_norm = register_module("encoder_attn_layer_norm",
                                              layer_norm(options.embed_dim, options.layer_norm_eps));
  }
  ffn = register_module("ffn", FeedForwardNetwork(options));
  final_layer_norm =
      register_module("final_layer_norm", layer_norm(options.embed_dim, options.layer_norm_eps));
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& x, bool causal, const at::Tensor& memory,
                                     const at::Tensor& memory_padding_mask) {
  if (static_cast<bool>(encoder_attn) != memory.defined())
    fail("decoder layer", encoder_attn ? "the cross-attention needs a memory tensor"
                                       : "a memory tensor was given to a layer without cross-attention");
  auto h = self_attn_layer_norm(x);
  auto y = x + at::dropout(self_attn->forward(h, h, h, at::Tensor(), causal), dropout_, is_training());
  if (encoder_attn) {
    h = encoder_attn_layer_norm(y);
    y = y + at::dropout(encoder_attn(h, memory, memory, memory_padding_mask), dropout_, is_training());
  }
  return y + ffn(final_layer_norm(y));
}

void subln_rescale(torch::nn::Module& module, double scale, const std::string& skip) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.named_parameters(/*recurse=*/true)) {
    const std::string& name = p.key();
    if (!skip.empty() && name.find(skip) != std::string::npos) continue;
    for (const char* part : {"fc1", "fc2", "out_proj", "v_proj"}) {
      if (name.find(part) != std::string::npos) {
        p.value().mul_(scale);
        break;
      }
    }
  }
}

}  // namespace kosmosg::nn
