#include "kosmosg/models/clip.h"

#include <filesystem>
#include <sstream>

#include "kosmosg/error.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/nn/attention.h"
#include "kosmosg/nn/norms.h"
#include "models/config_checks.h"

namespace kosmosg::models {
namespace {

namespace tnn = torch::nn;

void check_activation(const std::string& act, const std::string& what) {
  if (act != "quick_gelu" && act != "gelu")
    fail(what, "hidden_act is '" + act + "', expected 'quick_gelu' or 'gelu'");
}

CLIPEncoderConfig encoder_from_json(const io::Json& json, CLIPEncoderConfig c,
                                    const std::string& what) {
  c.hidden_size = io::config_value(json, "hidden_size", c.hidden_size, what);
  c.intermediate_size = io::config_value(json, "intermediate_size", c.intermediate_size, what);
  c.num_hidden_layers = io::config_value(json, "num_hidden_layers", c.num_hidden_layers, what);
  c.num_attention_heads =
      io::config_value(json, "num_attention_heads", c.num_attention_heads, what);
  c.hidden_act = io::config_value(json, "hidden_act", c.hidden_act, what);
  c.layer_norm_eps = io::config_value(json, "layer_norm_eps", c.layer_norm_eps, what);
  detail::require_positive(c.hidden_size, "hidden_size", what);
  detail::require_positive(c.intermediate_size, "intermediate_size", what);
  detail::require_positive(c.num_attention_heads, "num_attention_heads", what);
  detail::require_positive(c.num_hidden_layers, "num_hidden_layers", what, /*allow_zero=*/true);
  if (c.hidden_size % c.num_attention_heads != 0)
    fail(what, "hidden_size " + std::to_string(c.hidden_size) +
                   " is not divisible by num_attention_heads " +
                   std::to_string(c.num_attention_heads));
  check_activation(c.hidden_act, what);
  return c;
}

const io::Json& sub_config(const io::Json& json, const std::string& key, const std::string& what) {
  static const io::Json empty = io::Json::object();
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return empty;
  if (!it->is_object()) fail(what, "'" + key + "' is " + io::brief(*it) + ", expected an object");
  return *it;
}

// LoRA-compatible, as the text encoder's projections are what lora_te_* files adapt.
nn::LoRACompatibleLinear linear(int64_t in, int64_t out) {
  return nn::LoRACompatibleLinear(tnn::LinearOptions(in, out));
}

nn::Linear projection(int64_t in, int64_t out) {
  return nn::Linear(tnn::LinearOptions(in, out).bias(false));
}

}  // namespace

CLIPTextConfig CLIPTextConfig::from_json(const io::Json& json, const std::string& what) {
  CLIPTextConfig c;
  c.encoder = encoder_from_json(json, c.encoder, what);
  c.vocab_size = io::config_value(json, "vocab_size", c.vocab_size, what);
  c.max_position_embeddings =
      io::config_value(json, "max_position_embeddings", c.max_position_embeddings, what);
  c.eos_token_id = io::config_value(json, "eos_token_id", c.eos_token_id, what);
  c.projection_dim = io::config_value(json, "projection_dim", c.projection_dim, what);
  detail::require_positive(c.vocab_size, "vocab_size", what);
  detail::require_positive(c.max_position_embeddings, "max_position_embeddings", what);
  return c;
}

CLIPVisionConfig CLIPVisionConfig::from_json(const io::Json& json, const std::string& what) {
  CLIPVisionConfig c;
  c.encoder = encoder_from_json(json, c.encoder, what);
  c.image_size = io::config_value(json, "image_size", c.image_size, what);
  c.patch_size = io::config_value(json, "patch_size", c.patch_size, what);
  c.num_channels = io::config_value(json, "num_channels", c.num_channels, what);
  c.projection_dim = io::config_value(json, "projection_dim", c.projection_dim, what);
  detail::require_positive(c.image_size, "image_size", what);
  detail::require_positive(c.patch_size, "patch_size", what);
  detail::require_positive(c.num_channels, "num_channels", what);
  if (c.image_size % c.patch_size != 0)
    fail(what, "image_size " + std::to_string(c.image_size) + " is not a multiple of patch_size " +
                   std::to_string(c.patch_size));
  return c;
}

CLIPConfig CLIPConfig::from_json(const io::Json& json, const std::string& what) {
  CLIPConfig c;
  c.text = CLIPTextConfig::from_json(sub_config(json, "text_config", what), what + " text_config");
  c.vision =
      CLIPVisionConfig::from_json(sub_config(json, "vision_config", what), what + " vision_config");
  c.projection_dim = io::config_value(json, "projection_dim", c.projection_dim, what);
  c.logit_scale_init_value =
      io::config_value(json, "logit_scale_init_value", c.logit_scale_init_value, what);
  detail::require_positive(c.projection_dim, "projection_dim", what);
  return c;
}

CLIPAttentionImpl::CLIPAttentionImpl(int64_t hidden_size, int64_t heads) : heads_(heads) {
  q_proj = register_module("q_proj", linear(hidden_size, hidden_size));
  k_proj = register_module("k_proj", linear(hidden_size, hidden_size));
  v_proj = register_module("v_proj", linear(hidden_size, hidden_size));
  out_proj = register_module("out_proj", linear(hidden_size, hidden_size));
}

at::Tensor CLIPAttentionImpl::forward(const at::Tensor& x, bool causal,
                                      const std::optional<at::Tensor>& mask) {
  nn::AttentionOptions options;
  options.causal = causal;
  options.mask = mask;
  auto q = nn::split_heads(q_proj(x), heads_);
  auto k = nn::split_heads(k_proj(x), heads_);
  auto v = nn::split_heads(v_proj(x), heads_);
  return out_proj(nn::merge_heads(nn::attention(q, k, v, options)));
}

CLIPMLPImpl::CLIPMLPImpl(const CLIPEncoderConfig& config)
    : quick_gelu_(config.hidden_act == "quick_gelu") {
  check_activation(config.hidden_act, "CLIPMLP");
  fc1 = register_module("fc1", linear(config.hidden_size, config.intermediate_size));
  fc2 = register_module("fc2", linear(config.intermediate_size, config.hidden_size));
}

at::Tensor CLIPMLPImpl::forward(const at::Tensor& x) {
  auto h = fc1(x);
  h = quick_gelu_ ? h * torch::sigmoid(1.702 * h) : torch::gelu(h);
  return fc2(h);
}

CLIPEncoderLayerImpl::CLIPEncoderLayerImpl(const CLIPEncoderConfig& config) {
  layer_norm1 =
      register_module("layer_norm1", nn::layer_norm(config.hidden_size, config.layer_norm_eps));
  self_attn =
      register_module("self_attn", CLIPAttention(config.hidden_size, config.num_attention_heads));
  layer_norm2 =
      register_module("layer_norm2", nn::layer_norm(config.hidden_size, config.layer_norm_eps));
  mlp = register_module("mlp", CLIPMLP(config));
}

at::Tensor CLIPEncoderLayerImpl::forward(const at::Tensor& x, bool causal,
                                         const std::optional<at::Tensor>& mask) {
  auto h = x + self_attn(layer_norm1(x), causal, mask);
  return h + mlp(layer_norm2(h));
}

CLIPEncoderImpl::CLIPEncoderImpl(const CLIPEncoderConfig& config) {
  layers = register_module("layers", tnn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    layers->push_back(CLIPEncoderLayer(config));
}

at::Tensor CLIPEncoderImpl::forward(at::Tensor x, bool causal,
                                    const std::optional<at::Tensor>& mask) {
  for (const auto& layer : *layers) x = layer->as<CLIPEncoderLayer>()->forward(x, causal, mask);
  return x;
}

CLIPTextEmbeddingsImpl::CLIPTextEmbeddingsImpl(const CLIPTextConfig& config) {
  const int64_t d = config.encoder.hidden_size;
  token_embedding = register_module("token_embedding", tnn::Embedding(config.vocab_size, d));
  position_embedding =
      register_module("position_embedding", tnn::Embedding(config.max_position_embeddings, d));
}

at::Tensor CLIPTextEmbeddingsImpl::forward(const at::Tensor& input_ids) {
  const int64_t length = input_ids.size(1);
  return token_embedding(input_ids) + position_embedding->weight.slice(0, 0, length).unsqueeze(0);
}

CLIPTextTransformerImpl::CLIPTextTransformerImpl(const CLIPTextConfig& config) : config_(config) {
  embeddings = register_module("embeddings", CLIPTextEmbeddings(config));
  encoder = register_module("encoder", CLIPEncoder(config.encoder));
  final_layer_norm = register_module(
      "final_layer_norm", nn::layer_norm(config.encoder.hidden_size, config.encoder.layer_norm_eps));
}

CLIPTextOutput CLIPTextTransformerImpl::forward(const at::Tensor& input_ids,
                                                const at::Tensor& attention_mask) {
  const std::string what = "CLIPTextModel";
  if (input_ids.dim() != 2 || !at::isIntegralType(input_ids.scalar_type(), false)) {
    std::ostringstream os;
    os << "input_ids has shape " << input_ids.sizes() << " and dtype " << input_ids.scalar_type()
       << ", expected integer ids of shape [batch, length]";
    fail(what, os.str());
  }
  const int64_t batch = input_ids.size(0), length = input_ids.size(1);
  if (length < 1 || length > config_.max_position_embeddings)
    fail(what, "input_ids has " + std::to_string(length) + " positions, expected 1 to " +
                   std::to_string(config_.max_position_embeddings));
  if (input_ids.numel() > 0) {
    const int64_t lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size)
      fail(what, "input_ids range from " + std::to_string(lo) + " to " + std::to_string(hi) +
                     ", expected ids below vocab_size " + std::to_string(config_.vocab_size));
  }
  auto ids = input_ids.to(torch::kLong);
  std::optional<at::Tensor> mask;
  if (attention_mask.defined()) {
    if (attention_mask.sizes() != input_ids.sizes()) {
      std::ostringstream os;
      os << "attention_mask has shape " << attention_mask.sizes() << ", expected "
         << input_ids.sizes() << " like input_ids";
      fail(what, os.str());
    }
    mask = attention_mask.ne(0).view({batch, 1, 1, length}).to(ids.device());
  }

  auto h = encoder(embeddings(ids), /*causal=*/true, mask);
  auto last = final_layer_norm(h);

  // transformers keeps the argmax rule for configs with the legacy eos_token_id 2 (SD1.5's):
  // there the eos id 49407 is the largest id, so argmax finds its first occurrence.
  at::Tensor eos_index = config_.eos_token_id == 2
                             ? ids.to(torch::kInt).argmax(-1)
                             : ids.eq(config_.eos_token_id).to(torch::kInt).argmax(-1);
  auto rows = torch::arange(batch, ids.options());
  return {last, last.index({rows, eos_index})};
}

CLIPTextModelImpl::CLIPTextModelImpl(const CLIPTextConfig& config) : config_(config) {
  text_model = register_module("text_model", CLIPTextTransformer(config));
}

CLIPTextOutput CLIPTextModelImpl::forward(const at::Tensor& input_ids,
                                          const at::Tensor& attention_mask) {
  return text_model(input_ids, attention_mask);
}

CLIPTextModelWithProjectionImpl::CLIPTextModelWithProjectionImpl(const CLIPTextConfig& config) {
  text_model = register_module("text_model", CLIPTextTransformer(config));
  text_projection = register_module(
      "text_projection", projection(config.encoder.hidden_size, config.projection_dim));
}

CLIPTextProjectionOutput CLIPTextModelWithProjectionImpl::forward(
    const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  auto out = text_model(input_ids, attention_mask);
  return {text_projection(out.pooler_output), out.last_hidden_state, out.pooler_output};
}

CLIPVisionEmbeddingsImpl::CLIPVisionEmbeddingsImpl(const CLIPVisionConfig& config)
    : config_(config) {
  const int64_t d = config.encoder.hidden_size;
  const int64_t grid = config.image_size / config.patch_size;
  class_embedding = register_parameter("class_embedding", torch::randn({d}));
  patch_embedding = register_module(
      "patch_embedding", tnn::Conv2d(tnn::Conv2dOptions(config.num_channels, d, config.patch_size)
                                         .stride(config.patch_size)
                                         .bias(false)));
  position_embedding = register_module("position_embedding", tnn::Embedding(1 + grid * grid, d));
}

at::Tensor CLIPVisionEmbeddingsImpl::forward(const at::Tensor& pixel_values) {
  const auto s = pixel_values.sizes();
  if (s.size() != 4 || s[1] != config_.num_channels || s[2] != config_.image_size ||
      s[3] != config_.image_size) {
    std::ostringstream os;
    os << "pixel_values has shape " << s << ", expected [batch, " << config_.num_channels << ", "
       << config_.image_size << ", " << config_.image_size << "]";
    fail("CLIPVisionModel", os.str());
  }
  const int64_t batch = s[0];
  auto weight = patch_embedding->weight;
  auto patches = patch_embedding(pixel_values.to(weight.dtype())).flatten(2).transpose(1, 2);
  auto cls = class_embedding.view({1, 1, -1}).expand({batch, 1, class_embedding.size(0)});
  return torch::cat({cls, patches}, 1) + position_embedding->weight.unsqueeze(0);
}

CLIPVisionTransformerImpl::CLIPVisionTransformerImpl(const CLIPVisionConfig& config) {
  const int64_t d = config.encoder.hidden_size;
  const double eps = config.encoder.layer_norm_eps;
  embeddings = register_module("embeddings", CLIPVisionEmbeddings(config));
  pre_layrnorm = register_module("pre_layrnorm", nn::layer_norm(d, eps));
  encoder = register_module("encoder", CLIPEncoder(config.encoder));
  post_layernorm = register_module("post_layernorm", nn::layer_norm(d, eps));
}

CLIPVisionOutput CLIPVisionTransformerImpl::forward(const at::Tensor& pixel_values) {
  auto h = encoder(pre_layrnorm(embeddings(pixel_values)), /*causal=*/false, std::nullopt);
  return {h, post_layernorm(h.select(1, 0))};
}

CLIPVisionModelWithProjectionImpl::CLIPVisionModelWithProjectionImpl(
    const CLIPVisionConfig& config) {
  vision_model = register_module("vision_model", CLIPVisionTransformer(config));
  visual_projection = register_module(
      "visual_projection", projection(config.encoder.hidden_size, config.projection_dim));
}

CLIPVisionProjectionOutput CLIPVisionModelWithProjectionImpl::forward(
    const at::Tensor& pixel_values) {
  auto out = vision_model(pixel_values);
  return {visual_projection(out.pooler_output), out.last_hidden_state, out.pooler_output};
}

CLIPModelImpl::CLIPModelImpl(const CLIPConfig& config) {
  text_model = register_module("text_model", CLIPTextTransformer(config.text));
  vision_model = register_module("vision_model", CLIPVisionTransformer(config.vision));
  visual_projection = register_module(
      "visual_projection", projection(config.vision.encoder.hidden_size, config.projection_dim));
  text_projection = register_module(
      "text_projection", projection(config.text.encoder.hidden_size, config.projection_dim));
  logit_scale = register_parameter("logit_scale",
                                   torch::tensor(config.logit_scale_init_value, torch::kFloat));
}

at::Tensor CLIPModelImpl::get_text_features(const at::Tensor& input_ids,
                                            const at::Tensor& attention_mask) {
  return text_projection(text_model(input_ids, attention_mask).pooler_output);
}

at::Tensor CLIPModelImpl::get_image_features(const at::Tensor& pixel_values) {
  return visual_projection(vision_model(pixel_values).pooler_output);
}

CLIPTextModel load_clip_text_model(const std::string& folder) {
  const auto config_path = (std::filesystem::path(folder) / "config.json").string();
  if (!std::filesystem::exists(config_path))
    fail("load_clip_text_model", folder + " has no config.json");
  auto model = detail::build_module<CLIPTextModel>(CLIPTextConfig::from_json(io::read_json(config_path), config_path),
                                                   config_path);
  io::LoadOptions options;
  options.source_name = folder;
  io::load_weights(*model, io::read_component_weights(folder, {"model"}), options);
  model->eval();
  return model;
}

}  // namespace kosmosg::models
