#include "kosmosg/models/vit.h"

#include <cmath>
#include <regex>
#include <sstream>

#include "kosmosg/nn/norms.h"
#include "models/config_checks.h"

namespace kosmosg::models {

ViTConfig ViTConfig::from_json(const io::Json& json, const std::string& what) {
  using io::config_value;
  ViTConfig c;
  c.image_size = config_value<int64_t>(json, "image_size", c.image_size, what);
  c.patch_size = config_value<int64_t>(json, "patch_size", c.patch_size, what);
  c.width = config_value<int64_t>(json, "width", c.width, what);
  c.layers = config_value<int64_t>(json, "layers", c.layers, what);
  c.head_width = config_value<int64_t>(json, "head_width", c.head_width, what);
  c.mlp_ratio = config_value<double>(json, "mlp_ratio", c.mlp_ratio, what);
  c.quick_gelu = config_value<bool>(json, "quick_gelu", c.quick_gelu, what);
  c.layer_norm_eps = config_value<double>(json, "layer_norm_eps", c.layer_norm_eps, what);

  detail::require_positive(c.image_size, "image_size", what);
  detail::require_positive(c.patch_size, "patch_size", what);
  detail::require_positive(c.width, "width", what);
  detail::require_positive(c.layers, "layers", what, /*allow_zero=*/true);
  detail::require_positive(c.head_width, "head_width", what);
  detail::require_positive(c.mlp_dim(), "mlp_ratio", what);
  if (c.image_size % c.patch_size != 0)
    fail(what, "image_size " + std::to_string(c.image_size) + " is not a multiple of patch_size " +
                   std::to_string(c.patch_size));
  if (c.width % c.head_width != 0)
    fail(what, "width " + std::to_string(c.width) + " is not a multiple of head_width " +
                   std::to_string(c.head_width));
  const int64_t heads = config_value<int64_t>(json, "heads", c.heads(), what);
  if (heads != c.heads())
    fail(what, "heads is " + std::to_string(heads) + ", but width / head_width is " +
                   std::to_string(c.heads()));
  detail::require_setting(json, "use_proj", false, what);
  return c;
}

int64_t ViTConfig::tokens() const {
  const int64_t grid = image_size / patch_size;
  return 1 + grid * grid;
}

ViTMlpImpl::ViTMlpImpl(int64_t width, int64_t hidden, bool quick_gelu) : quick_gelu_(quick_gelu) {
  c_fc = register_module("c_fc", nn::Linear(width, hidden));
  c_proj = register_module("c_proj", nn::Linear(hidden, width));
}

at::Tensor ViTMlpImpl::forward(const at::Tensor& x) {
  auto h = c_fc(x);
  h = quick_gelu_ ? h * at::sigmoid(1.702 * h) : at::gelu(h);
  return c_proj(h);
}

ViTBlockImpl::ViTBlockImpl(const ViTConfig& config) {
  ts_attn = register_module("ts_attn", nn::MultiheadAttention(config.width, config.heads(), /*inner_ln=*/false,
                                                              config.layer_norm_eps, 0.0));
  ln_1 = register_module("ln_1", nn::layer_norm(config.width, config.layer_norm_eps));
  mlp = register_module("mlp", ViTMlp(config.width, config.mlp_dim(), config.quick_gelu));
  ln_2 = register_module("ln_2", nn::layer_norm(config.width, config.layer_norm_eps));
}

at::Tensor ViTBlockImpl::forward(const at::Tensor& x) {
  auto h = ln_1(x);
  auto y = x + ts_attn(h, h, h);
  return y + mlp(ln_2(y));
}

ViTTransformerImpl::ViTTransformerImpl(const ViTConfig& config) {
  resblocks = register_module("resblocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.layers; ++i) resblocks->push_back(ViTBlock(config));
}

at::Tensor ViTTransformerImpl::forward(const at::Tensor& x) {
  auto y = x;
  for (const auto& block : *resblocks) {
    auto* b = block->as<ViTBlockImpl>();
    y = checkpointing.run(*this, *b, [b](const at::Tensor& h) { return b->forward(h); }, y);
  }
  return y;
}

VisionTransformerImpl::VisionTransformerImpl(const ViTConfig& config) : config_(config) {
  conv1 = register_module(
      "conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(3, config.width, config.patch_size)
                                     .stride(config.patch_size)
                                     .bias(false)));
  const double scale = 1.0 / std::sqrt(static_cast<double>(config.width));
  class_embedding = register_parameter("class_embedding", torch::randn({config.width}) * scale);
  positional_embedding =
      register_parameter("positional_embedding", torch::randn({config.tokens(), config.width}) * scale);
  ln_pre = register_module("ln_pre", nn::layer_norm(config.width, config.layer_norm_eps));
  transformer = register_module("transformer", ViTTransformer(config));
  ln_post = register_module("ln_post", nn::layer_norm(config.width, config.layer_norm_eps));
}

at::Tensor VisionTransformerImpl::forward(const at::Tensor& pixel_values) {
  const int64_t s = config_.image_size;
  if (pixel_values.dim() != 4 || pixel_values.size(1) != 3 || pixel_values.size(2) != s ||
      pixel_values.size(3) != s) {
    std::ostringstream os;
    os << "pixel_values: found shape " << pixel_values.sizes() << ", expected [N, 3, " << s << ", " << s << "]";
    fail("vit", os.str());
  }
  // Shapes: S = image_size, P = patch_size, G = S/P patches a side, W = width.
  auto x = conv1(pixel_values.to(conv1->weight.device(), conv1->weight.scalar_type()));  // [N, W, G, G]
  const int64_t n = x.size(0);
  x = x.flatten(2).transpose(1, 2);  // [N, G², W]: one token per patch, row by row
  auto cls = class_embedding.to(x.scalar_type()).view({1, 1, -1}).expand({n, 1, config_.width});  // [N, 1, W]
  x = at::cat({cls, x}, 1) + positional_embedding.to(x.scalar_type());  // [N, 1 + G², W]
  x = transformer(ln_pre(x));                                           // [N, 1 + G², W]
  // Every token, not only the class token: the connector reads all of them.
  return ln_post(x);
}

void VisionTransformerImpl::set_gradient_checkpointing(bool on, bool reentrant_compat) {
  transformer->checkpointing = {on, reentrant_compat};
}

ClipVisualOnlyImpl::ClipVisualOnlyImpl(const ViTConfig& config) : config_(config) {
  visual = register_module("visual", VisionTransformer(config));
}

at::Tensor ClipVisualOnlyImpl::forward(const at::Tensor& pixel_values) {
  auto x = visual(pixel_values);
  return x / x.norm(2, -1, /*keepdim=*/true).clamp_min(1e-12);
}

void ClipVisualOnlyImpl::set_gradient_checkpointing(bool on, bool reentrant_compat) {
  visual->set_gradient_checkpointing(on, reentrant_compat);
}

void ClipVisualOnlyImpl::load(const io::TensorMap& weights, const io::LoadOptions& options,
                              bool ignore_unused_attn) {
  if (!ignore_unused_attn) {
    io::load_weights(*this, weights, options);
    return;
  }
  static const std::regex unused(
      R"(^visual\.transformer\.resblocks\.\d+\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$)");
  io::TensorMap kept;
  for (const auto& [name, tensor] : weights)
    if (!std::regex_match(name, unused)) kept.emplace(name, tensor);
  io::load_weights(*this, kept, options);
}

}  // namespace kosmosg::models
