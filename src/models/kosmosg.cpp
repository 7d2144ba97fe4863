#include "kosmosg/models/kosmosg.h"

#include "kosmosg/error.h"

namespace kosmosg::models {
namespace {

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// The section `key`, or its upstream spelling `alias`; an empty object when neither is there.
const io::Json& section(const io::Json& json, const std::string& key, const std::string& alias) {
  static const io::Json empty = io::Json::object();
  for (const auto& k : {key, alias}) {
    auto it = json.find(k);
    if (it != json.end() && !it->is_null()) {
      if (!it->is_object()) fail("kosmosg config", "section '" + k + "' is not an object");
      return *it;
    }
  }
  return empty;
}

void require_equal(int64_t a, const std::string& a_name, int64_t b, const std::string& b_name,
                   const std::string& what) {
  if (a == b) return;
  fail(what, a_name + " (" + std::to_string(a) + ") must equal " + b_name + " (" + std::to_string(b) + ")");
}

}  // namespace

KosmosGConfig KosmosGConfig::from_json(const io::Json& json, const std::string& what) {
  if (!json.is_object()) fail(what, "expected a JSON object");
  KosmosGConfig c;
  c.mllm = MLLMConfig::from_json(section(json, "mllm", "gpt"), what + " [mllm]");
  c.vision = ViTConfig::from_json(section(json, "vision", "clip"), what + " [vision]");
  const io::Json& connector = section(json, "connector", "xconnector");
  c.connector = XConnectorConfig::from_json(connector, what + " [connector]");
  // Upstream's connector attention drops with the MLLM's attention_dropout argument.
  const io::Json& mllm = section(json, "mllm", "gpt");
  if (!connector.contains("attention_dropout") && mllm.contains("attention_dropout"))
    c.connector.attention_dropout = mllm.at("attention_dropout").get<double>();
  const io::Json& aligner = section(json, "aligner", "aligner");
  c.aligner = AlignerConfig::from_json(aligner, what + " [aligner]");
  // Upstream builds the aligner on the MLLM's width; a section that does not name it means that.
  if (!aligner.contains("input_dim") && !aligner.contains("decoder_embed_dim")) c.aligner.input_dim = c.mllm.embed_dim;
  c.null_token = io::config_value<int64_t>(json, "null_token", c.null_token, what);
  require_equal(c.connector.input_dim, "connector.input_dim", c.vision.width, "vision.width", what);
  require_equal(c.connector.output_dim, "connector.output_dim", c.mllm.embed_dim, "mllm.decoder_embed_dim", what);
  require_equal(c.aligner.input_dim, "aligner.input_dim", c.mllm.embed_dim, "mllm.decoder_embed_dim", what);
  const int64_t slots = io::config_value<int64_t>(json, "image_token_length", c.connector.latent_query_num, what);
  require_equal(slots, "image_token_length", c.connector.latent_query_num, "connector.latent_query_num", what);
  if (c.null_token < 0 || c.null_token >= c.mllm.vocab_size)
    fail(what, "null_token " + std::to_string(c.null_token) + " is outside the vocabulary");
  return c;
}

KosmosGConfig KosmosGConfig::from_file(const std::string& path) {
  return from_json(io::read_json(path), path);
}

io::TensorMap strip_prefix(const io::TensorMap& weights, const std::string& prefix) {
  io::TensorMap out;
  for (auto it = weights.lower_bound(prefix); it != weights.end() && starts_with(it->first, prefix); ++it)
    out.emplace(it->first.substr(prefix.size()), it->second);
  return out;
}

KosmosGModelImpl::KosmosGModelImpl(const KosmosGConfig& config) : config_(config) {
  gpt_model = register_module("gpt_model", GPTModel(config.mllm));
  aligner = register_module("aligner", AlignerEncoder(config.aligner));
  img_model = register_module("img_model", ClipVisualOnly(config.vision));
  img_connector = register_module("img_connector", XConnector(config.connector));
}

at::Tensor KosmosGModelImpl::image_embeddings(const at::Tensor& pixel_values) {
  return img_connector(img_model(pixel_values)).flatten(0, 1);
}

at::Tensor KosmosGModelImpl::condition(const at::Tensor& src_tokens, const at::Tensor& pixel_values,
                                       const at::Tensor& img_gpt_input_mask) {
  at::Tensor features;
  if (pixel_values.defined() && pixel_values.numel() > 0) features = image_embeddings(pixel_values);
  auto hidden = gpt_model(src_tokens, features, img_gpt_input_mask, /*compute_logits=*/false).hidden;
  return aligner(hidden, src_tokens.eq(config_.mllm.padding_idx));
}

at::Tensor KosmosGModelImpl::encode_condition(const at::Tensor& src_tokens, const at::Tensor& pixel_values,
                                              const at::Tensor& img_gpt_input_mask,
                                              const at::Tensor& negative_tokens,
                                              int64_t num_images_per_prompt) {
  if (num_images_per_prompt < 1)
    fail("encode_condition", "num_images_per_prompt is " + std::to_string(num_images_per_prompt) +
                                 ", expected at least 1");
  if (src_tokens.dim() != 2) fail("encode_condition", "src_tokens must be [B, T]");
  auto conditional = condition(src_tokens, pixel_values, img_gpt_input_mask);

  auto unconditional_tokens = at::full({1, 1}, config_.null_token, src_tokens.options().dtype(at::kLong));
  if (negative_tokens.defined()) {
    if (negative_tokens.dim() != 2 || negative_tokens.size(0) != 1)
      fail("encode_condition", "negative_tokens must be [1, Tn]");
    if (negative_tokens.size(1) > unconditional_tokens.size(1)) unconditional_tokens = negative_tokens;
  }
  auto unconditional = condition(unconditional_tokens);

  const int64_t b = src_tokens.size(0);
  return at::cat({unconditional.expand({b * num_images_per_prompt, -1, -1}),
                  conditional.repeat({num_images_per_prompt, 1, 1})},
                 0);
}

void KosmosGModelImpl::set_gradient_checkpointing(bool on, bool reentrant_compat) {
  gpt_model->set_gradient_checkpointing(on, reentrant_compat);
  img_model->set_gradient_checkpointing(on, reentrant_compat);
  aligner->set_gradient_checkpointing(on, reentrant_compat);
}

void KosmosGModelImpl::store_block_weights(c10::ScalarType dtype) {
  for (const auto& list : {gpt_model->decoder->layers, img_model->visual->transformer->resblocks,
                           aligner->encoder_proj->layers, aligner->encoder->layers})
    for (const auto& block : *list) nn::store_block_weights(*block, dtype);
}

void KosmosGModelImpl::load(const io::TensorMap& weights, const io::LoadOptions& options) {
  static const std::vector<std::string> elsewhere = {
      "diffusion_unet.", "vae.", "aligner.clip_encoder.", "aligner.decoder.",
      "aligner.decoder_proj.", "aligner.decoder_query"};
  static const std::vector<std::string> children = {"gpt_model.", "aligner.", "img_model.", "img_connector."};
  std::vector<std::string> unknown;
  io::TensorMap mine;
  for (const auto& [name, tensor] : weights) {
    bool skip = false;
    for (const auto& p : elsewhere) skip |= starts_with(name, p);
    if (skip) continue;
    bool known = false;
    for (const auto& p : children) known |= starts_with(name, p);
    if (known)
      mine.emplace(name, tensor);
    else
      unknown.push_back(name);
  }
  if (options.strict && !unknown.empty()) {
    std::string list;
    for (const auto& u : unknown) list += "\n    " + u;
    fail("load_weights", options.source_name + " has " + std::to_string(unknown.size()) +
                             " names outside the Kosmos-G components:" + list);
  }
  auto child_options = [&](const std::string& prefix) {
    io::LoadOptions o = options;
    o.source_name = options.source_name + " (" + prefix + "*)";
    return o;
  };
  gpt_model->load(strip_prefix(mine, "gpt_model."), child_options("gpt_model."));
  io::load_weights(*aligner, strip_prefix(mine, "aligner."), child_options("aligner."));
  img_model->load(strip_prefix(mine, "img_model."), child_options("img_model."));
  io::load_weights(*img_connector, strip_prefix(mine, "img_connector."), child_options("img_connector."));
}

}  // namespace kosmosg::models
