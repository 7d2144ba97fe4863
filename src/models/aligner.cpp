#include "kosmosg/models/aligner.h"

#include <cmath>
#include <sstream>

#include "kosmosg/nn/norms.h"
#include "models/config_checks.h"

namespace kosmosg::models {
namespace {

// [B, T] mask of pads as bool on `device`, or undefined; checks the shape.
at::Tensor pad_mask(const at::Tensor& mask, int64_t b, int64_t t, const at::Device& device) {
  if (!mask.defined()) return mask;
  if (mask.dim() != 2 || mask.size(0) != b || mask.size(1) != t) {
    std::ostringstream os;
    os << "padding mask: found shape " << mask.sizes() << ", expected [" << b << ", " << t << "]";
    fail("aligner", os.str());
  }
  return mask.to(device).ne(0);
}

double log_layers(int64_t factor, int64_t layers) {
  return std::log(static_cast<double>(factor * layers));
}

}  // namespace

AlignerConfig AlignerConfig::from_json(const io::Json& json, const std::string& what) {
  using io::config_value;
  AlignerConfig c;
  const bool upstream = json.contains("EncoderDecoderConfig");
  const io::Json& ts = upstream ? json.at("EncoderDecoderConfig") : json;
  if (upstream) {
    c.embed_dim = config_value<int64_t>(json, "aligner_dim", c.embed_dim, what);
    c.input_dim = config_value<int64_t>(json, "decoder_embed_dim", c.input_dim, what);
    c.num_queries = config_value<int64_t>(json, "encoder_query_num", c.num_queries, what);
    c.max_positions = config_value<int64_t>(json, "table_length", c.max_positions, what);
  } else {
    c.input_dim = config_value<int64_t>(json, "input_dim", c.input_dim, what);
    c.num_queries = config_value<int64_t>(json, "num_queries", c.num_queries, what);
    c.max_positions = config_value<int64_t>(json, "max_positions", c.max_positions, what);
    c.position_offset = config_value<int64_t>(json, "position_offset", c.position_offset, what);
  }
  const int64_t encoder_dim = config_value<int64_t>(ts, "encoder_embed_dim", c.embed_dim, what);
  const int64_t decoder_dim = config_value<int64_t>(ts, "decoder_embed_dim", c.embed_dim, what);
  if (encoder_dim != decoder_dim || (upstream && encoder_dim != c.embed_dim))
    fail(what, "the aligner's encoder and decoder widths differ (" + std::to_string(encoder_dim) + " and " +
                   std::to_string(decoder_dim) + "); both stacks must have the aligner width");
  c.embed_dim = encoder_dim;
  c.encoder_layers = config_value<int64_t>(ts, "encoder_layers", c.encoder_layers, what);
  c.encoder_heads = config_value<int64_t>(ts, "encoder_attention_heads", c.encoder_heads, what);
  c.encoder_ffn_dim = config_value<int64_t>(ts, "encoder_ffn_embed_dim", c.encoder_ffn_dim, what);
  c.decoder_layers = config_value<int64_t>(ts, "decoder_layers", c.decoder_layers, what);
  c.decoder_heads = config_value<int64_t>(ts, "decoder_attention_heads", c.decoder_heads, what);
  c.decoder_ffn_dim = config_value<int64_t>(ts, "decoder_ffn_embed_dim", c.decoder_ffn_dim, what);
  c.rec_loss_scale_numerator = config_value<double>(json, "rec_loss_scale_numerator",
                                                    static_cast<double>(c.num_queries), what);
  const bool no_scale = config_value<bool>(ts, "no_scale_embedding", true, what);
  c.embed_scale = no_scale ? 1.0 : std::sqrt(static_cast<double>(c.embed_dim));
  c.dropout = config_value<double>(ts, "dropout", c.dropout, what);
  c.attention_dropout = config_value<double>(ts, "attention_dropout", c.attention_dropout, what);
  c.activation_dropout = config_value<double>(ts, "activation_dropout", c.activation_dropout, what);
  c.subln = config_value<bool>(ts, "subln", c.subln, what);
  c.layer_norm_eps = config_value<double>(ts, "layer_norm_eps", c.layer_norm_eps, what);

  detail::require_positive(c.input_dim, upstream ? "decoder_embed_dim" : "input_dim", what);
  detail::require_positive(c.embed_dim, "encoder_embed_dim", what);
  detail::require_positive(c.encoder_layers, "encoder_layers", what, /*allow_zero=*/true);
  detail::require_positive(c.decoder_layers, "decoder_layers", what, /*allow_zero=*/true);
  detail::require_positive(c.encoder_ffn_dim, "encoder_ffn_embed_dim", what);
  detail::require_positive(c.decoder_ffn_dim, "decoder_ffn_embed_dim", what);
  detail::require_heads(c.embed_dim, c.encoder_heads, what);
  detail::require_heads(c.embed_dim, c.decoder_heads, what);
  detail::require_positive(c.num_queries, "num_queries", what);
  detail::require_positive(c.position_offset, "position_offset", what, /*allow_zero=*/true);
  if (c.max_positions <= c.position_offset)
    fail(what, "max_positions " + std::to_string(c.max_positions) + " leaves no row after the offset " +
                   std::to_string(c.position_offset));
  detail::require_probability(c.dropout, "dropout", what);
  detail::require_probability(c.attention_dropout, "attention_dropout", what);
  detail::require_probability(c.activation_dropout, "activation_dropout", what);
  for (const char* key : {"encoder_normalize_before", "decoder_normalize_before"})
    detail::require_setting(ts, key, true, what);
  detail::require_setting(ts, "activation_fn", "gelu", what);
  detail::require_setting(ts, "deepnorm", false, what);
  detail::require_setting(ts, "layernorm_embedding", false, what);
  detail::require_setting(ts, "rel_pos_buckets", 0, what);
  detail::require_setting(ts, "max_rel_pos", 0, what);
  return c;
}

nn::TransformerOptions AlignerConfig::encoder_options() const {
  nn::TransformerOptions o;
  o.embed_dim = embed_dim;
  o.heads = encoder_heads;
  o.ffn_dim = encoder_ffn_dim;
  o.subln = subln;
  o.layer_norm_eps = layer_norm_eps;
  o.dropout = dropout;
  o.attention_dropout = attention_dropout;
  o.activation_dropout = activation_dropout;
  return o;
}

nn::TransformerOptions AlignerConfig::decoder_options() const {
  nn::TransformerOptions o = encoder_options();
  o.heads = decoder_heads;
  o.ffn_dim = decoder_ffn_dim;
  return o;
}

TorchscaleEncoderImpl::TorchscaleEncoderImpl(const AlignerConfig& config, int64_t input_dim,
                                             int64_t output_dim)
    : config_(config) {
  if (input_dim > 0) embed_tokens = register_module("embed_tokens", nn::Linear(input_dim, config.embed_dim));
  embed_positions = register_module("embed_positions", torch::nn::Embedding(config.max_positions, config.embed_dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.encoder_layers; ++i) layers->push_back(nn::EncoderLayer(config.encoder_options()));
  layer_norm = register_module("layer_norm", nn::layer_norm(config.embed_dim, config.layer_norm_eps));
  if (output_dim > 0)
    output_projection = register_module("output_projection", nn::Linear(config.embed_dim, output_dim));
}

at::Tensor TorchscaleEncoderImpl::forward(const at::Tensor& x, const at::Tensor& padding_mask) {
  const int64_t b = x.size(0), t = x.size(1);
  if (t > config_.max_condition_length())
    fail("aligner", "sequence of " + std::to_string(t) + " positions exceeds the " +
                        std::to_string(config_.max_condition_length()) + " the position table holds");
  // Shapes: x [B, T, I] (I: the input width, or E without embed_tokens), E = embed_dim.
  const auto& table = embed_positions->weight;
  auto mask = pad_mask(padding_mask, b, t, table.device());  // [B, T], true at padding
  auto input = x.to(table.device(), table.scalar_type());
  auto h = (embed_tokens ? embed_tokens(input) : input) * config_.embed_scale +
           table.slice(0, config_.position_offset, config_.position_offset + t);  // [B, T, E]
  h = at::dropout(h, config_.dropout, is_training());
  // Padded positions start from zero, as torchscale's encoder zeroes them.
  if (mask.defined()) h = h.masked_fill(mask.unsqueeze(-1), 0.0);
  for (const auto& layer : *layers) {
    auto* l = layer->as<nn::EncoderLayerImpl>();
    h = checkpointing.run(*this, *l, [l](const std::vector<at::Tensor>& in) {
          return std::vector<at::Tensor>{l->forward(in[0], in[1])};
        }, {h, mask})[0];
  }
  h = layer_norm(h);                                     // [B, T, E]
  return output_projection ? output_projection(h) : h;  // [B, T, output_dim] or [B, T, E]
}

TorchscaleDecoderImpl::TorchscaleDecoderImpl(const AlignerConfig& config) : config_(config) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.decoder_layers; ++i)
    layers->push_back(nn::DecoderLayer(config.decoder_options(), /*cross_attention=*/true));
  layer_norm = register_module("layer_norm", nn::layer_norm(config.embed_dim, config.layer_norm_eps));
}

at::Tensor TorchscaleDecoderImpl::forward(const at::Tensor& queries, const at::Tensor& memory,
                                          const at::Tensor& memory_padding_mask) {
  // Shapes: queries [B, Q, E] attend to memory [B, T, E] (no causal mask: queries see each other).
  auto mask = pad_mask(memory_padding_mask, memory.size(0), memory.size(1), memory.device());  // [B, T]
  auto h = at::dropout(queries * config_.embed_scale, config_.dropout, is_training());         // [B, Q, E]
  for (const auto& layer : *layers) {
    auto* l = layer->as<nn::DecoderLayerImpl>();
    h = checkpointing.run(*this, *l, [l](const std::vector<at::Tensor>& in) {
          return std::vector<at::Tensor>{l->forward(in[0], /*causal=*/false, in[1], in[2])};
        }, {h, memory, mask})[0];
  }
  return layer_norm(h);  // [B, Q, E]
}

AlignerEncoderImpl::AlignerEncoderImpl(const AlignerConfig& config) : config_(config) {
  encoder_proj = register_module("encoder_proj", TorchscaleEncoder(config, config.input_dim, 0));
  encoder_query = register_parameter("encoder_query", torch::randn({config.num_queries, config.embed_dim}));
  encoder = register_module("encoder", TorchscaleDecoder(config));
  if (config.subln && config.encoder_layers > 0 && config.decoder_layers > 0) {
    nn::subln_rescale(*encoder_proj, std::sqrt(log_layers(3, config.decoder_layers) *
                                               log_layers(2, config.encoder_layers) / 3.0));
    nn::subln_rescale(*encoder, std::sqrt(log_layers(3, config.decoder_layers)), "encoder_attn");
  }
}

at::Tensor AlignerEncoderImpl::forward(const at::Tensor& condition, const at::Tensor& padding_mask) {
  if (condition.dim() != 3 || condition.size(2) != config_.input_dim)
    fail("aligner", "condition must be [B, T, " + std::to_string(config_.input_dim) + "], found " +
                        std::to_string(condition.dim()) + " dims");
  // M: the MLLM's condition [B, T, D] → Q learned queries [B, Q, E] shaped like CLIP text states.
  auto mask = pad_mask(padding_mask, condition.size(0), condition.size(1), encoder_query.device());  // [B, T]
  auto memory = encoder_proj(condition, mask);                                     // [B, T, E]
  auto queries = encoder_query.unsqueeze(0).expand({condition.size(0), -1, -1});  // [B, Q, E]
  return encoder(queries, memory, mask);                                           // [B, Q, E]
}

void AlignerEncoderImpl::set_gradient_checkpointing(bool on, bool reentrant_compat) {
  for (const auto& m : modules()) {
    if (auto* e = dynamic_cast<TorchscaleEncoderImpl*>(m.get())) e->checkpointing = {on, reentrant_compat};
    if (auto* d = dynamic_cast<TorchscaleDecoderImpl*>(m.get())) d->checkpointing = {on, reentrant_compat};
  }
}

AlignerImpl::AlignerImpl(const AlignerConfig& config) : AlignerEncoderImpl(config) {
  decoder_query = register_parameter("decoder_query", torch::randn({config.max_positions, config.embed_dim}));
  decoder = register_module("decoder", TorchscaleDecoder(config));
  decoder_proj = register_module("decoder_proj", TorchscaleEncoder(config, 0, config.input_dim));
  if (config.subln && config.decoder_layers > 0)
    nn::subln_rescale(*decoder, std::sqrt(log_layers(3, config.decoder_layers)), "encoder_attn");
  if (config.subln && config.encoder_layers > 0)
    nn::subln_rescale(*decoder_proj, std::sqrt(log_layers(2, config.encoder_layers)));
}

AlignerOutput AlignerImpl::forward(const at::Tensor& condition, const at::Tensor& padding_mask,
                                   const at::Tensor& teacher) {
  AlignerOutput out;
  out.aligned = AlignerEncoderImpl::forward(condition, padding_mask);
  const int64_t b = condition.size(0), t = condition.size(1);
  if (teacher.sizes() != out.aligned.sizes()) {
    std::ostringstream os;
    os << "teacher embedding: found shape " << teacher.sizes() << ", expected " << out.aligned.sizes();
    fail("aligner", os.str());
  }
  // N: back from the Q aligned states to the T condition positions, [B, T, E] → [B, T, D].
  auto queries = decoder_query.slice(0, 0, t).unsqueeze(0).expand({b, -1, -1});
  out.reconstruction = decoder_proj(decoder(queries, out.aligned));
  auto target = teacher.to(out.aligned.device(), at::kFloat);
  out.mse_loss = (out.aligned.to(at::kFloat) - target).pow(2).mean();
  auto original = condition.to(out.reconstruction.device(), at::kFloat);
  out.rec_loss = (out.reconstruction.to(at::kFloat) - original).pow(2).mean() *
                 (config_.rec_loss_scale_numerator / static_cast<double>(t));
  return out;
}

}  // namespace kosmosg::models
