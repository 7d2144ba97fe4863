#include "kosmosg/models/dino.h"

#include <sstream>

#include "kosmosg/error.h"
#include "kosmosg/nn/attention.h"
#include "kosmosg/nn/norms.h"
#include "models/config_checks.h"

namespace kosmosg::models {
namespace {

namespace tnn = torch::nn;

// DINO nests some layers one level down (attn.qkv, patch_embed.proj) in modules that hold
// nothing else; a plain Module gives them those names.
std::shared_ptr<tnn::Module> group(tnn::Module& parent, const std::string& name) {
  return parent.register_module(name, std::make_shared<tnn::Module>(name));
}

int64_t image_size_from(const io::Json& json, int64_t fallback, const std::string& what) {
  auto it = json.find("img_size");
  if (it == json.end() || it->is_null()) return fallback;
  if (it->is_array()) {
    if (it->size() != 1 || !(*it)[0].is_number_integer())
      fail(what, "img_size is " + io::brief(*it) + ", expected one integer or a list of one");
    return (*it)[0].get<int64_t>();
  }
  return io::config_value(json, "img_size", fallback, what);
}

}  // namespace

DinoViTConfig DinoViTConfig::from_json(const io::Json& json, const std::string& what) {
  DinoViTConfig c;
  c.img_size = image_size_from(json, c.img_size, what);
  c.patch_size = io::config_value(json, "patch_size", c.patch_size, what);
  c.in_chans = io::config_value(json, "in_chans", c.in_chans, what);
  c.embed_dim = io::config_value(json, "embed_dim", c.embed_dim, what);
  c.depth = io::config_value(json, "depth", c.depth, what);
  c.num_heads = io::config_value(json, "num_heads", c.num_heads, what);
  c.mlp_ratio = io::config_value(json, "mlp_ratio", c.mlp_ratio, what);
  c.qkv_bias = io::config_value(json, "qkv_bias", c.qkv_bias, what);
  c.layer_norm_eps = io::config_value(json, "layer_norm_eps", c.layer_norm_eps, what);
  const int64_t classes = io::config_value<int64_t>(json, "num_classes", 0, what);
  if (classes != 0)
    fail(what, "num_classes is " + std::to_string(classes) +
                   ", expected 0 (the DINO feature model has no classifier head)");
  detail::require_positive(c.img_size, "img_size", what);
  detail::require_positive(c.patch_size, "patch_size", what);
  detail::require_positive(c.in_chans, "in_chans", what);
  detail::require_positive(c.embed_dim, "embed_dim", what);
  detail::require_positive(c.num_heads, "num_heads", what);
  detail::require_positive(c.depth, "depth", what, /*allow_zero=*/true);
  if (c.embed_dim % c.num_heads != 0)
    fail(what, "embed_dim " + std::to_string(c.embed_dim) + " is not divisible by num_heads " +
                   std::to_string(c.num_heads));
  if (c.img_size % c.patch_size != 0)
    fail(what, "img_size " + std::to_string(c.img_size) + " is not a multiple of patch_size " +
                   std::to_string(c.patch_size));
  if (c.mlp_ratio <= 0)
    fail(what, "mlp_ratio is " + std::to_string(c.mlp_ratio) + ", expected > 0");
  return c;
}

DinoBlockImpl::DinoBlockImpl(const DinoViTConfig& config) : heads_(config.num_heads) {
  const int64_t d = config.embed_dim;
  const auto hidden = static_cast<int64_t>(static_cast<double>(d) * config.mlp_ratio);
  norm1 = register_module("norm1", nn::layer_norm(d, config.layer_norm_eps));
  auto attn = group(*this, "attn");
  qkv =
      attn->register_module("qkv", nn::Linear(tnn::LinearOptions(d, 3 * d).bias(config.qkv_bias)));
  proj = attn->register_module("proj", nn::Linear(d, d));
  norm2 = register_module("norm2", nn::layer_norm(d, config.layer_norm_eps));
  auto mlp = group(*this, "mlp");
  fc1 = mlp->register_module("fc1", nn::Linear(d, hidden));
  fc2 = mlp->register_module("fc2", nn::Linear(hidden, d));
}

at::Tensor DinoBlockImpl::forward(const at::Tensor& x) {
  const int64_t b = x.size(0), n = x.size(1), d = x.size(2);
  // qkv output channels are q|k|v, each split into heads like a plain projection.
  auto parts = qkv(norm1(x)).view({b, n, 3, d}).unbind(2);
  auto attended =
      nn::attention(nn::split_heads(parts[0], heads_), nn::split_heads(parts[1], heads_),
                    nn::split_heads(parts[2], heads_));
  auto h = x + proj(nn::merge_heads(attended));
  return h + fc2(torch::gelu(fc1(norm2(h))));
}

DinoViTImpl::DinoViTImpl(const DinoViTConfig& config) : config_(config) {
  const int64_t d = config.embed_dim;
  const int64_t grid = config.img_size / config.patch_size;
  cls_token = register_parameter("cls_token", torch::zeros({1, 1, d}));
  pos_embed = register_parameter("pos_embed", torch::zeros({1, 1 + grid * grid, d}));
  patch_proj = group(*this, "patch_embed")
                   ->register_module(
                       "proj", tnn::Conv2d(tnn::Conv2dOptions(config.in_chans, d, config.patch_size)
                                               .stride(config.patch_size)));
  blocks = register_module("blocks", tnn::ModuleList());
  for (int64_t i = 0; i < config.depth; ++i) blocks->push_back(DinoBlock(config));
  norm = register_module("norm", nn::layer_norm(d, config.layer_norm_eps));
}

at::Tensor DinoViTImpl::forward_features(const at::Tensor& pixel_values) {
  const auto s = pixel_values.sizes();
  if (s.size() != 4 || s[1] != config_.in_chans || s[2] != config_.img_size ||
      s[3] != config_.img_size) {
    std::ostringstream os;
    os << "pixel_values has shape " << s << ", expected [batch, " << config_.in_chans << ", "
       << config_.img_size << ", " << config_.img_size
       << "] (other sizes need position-embedding interpolation, which is not implemented)";
    fail("DinoViT", os.str());
  }
  auto weight = patch_proj->weight;
  auto patches = patch_proj(pixel_values.to(weight.dtype())).flatten(2).transpose(1, 2);
  auto x = torch::cat({cls_token.expand({s[0], 1, config_.embed_dim}), patches}, 1) + pos_embed;
  for (const auto& block : *blocks) x = block->as<DinoBlock>()->forward(x);
  return norm(x);
}

at::Tensor DinoViTImpl::forward(const at::Tensor& pixel_values) {
  return forward_features(pixel_values).select(1, 0);
}

}  // namespace kosmosg::models
