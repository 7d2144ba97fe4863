#include "models/unet_blocks.h"

#include <torch/torch.h>

#include <cmath>

#include "kosmosg/error.h"
#include "kosmosg/nn/attention.h"
#include "kosmosg/nn/norms.h"

namespace kosmosg::models::blocks {
namespace {

namespace F = torch::nn::functional;

// A plain container so that children get the numeric names diffusers' nn.Sequential /
// nn.ModuleList give them where only some indices hold parameters (to_out.0, ff.net.2).
std::shared_ptr<torch::nn::Module> container() { return std::make_shared<torch::nn::Module>(); }

nn::LoRACompatibleConv conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1,
                            int64_t padding = -1) {
  if (padding < 0) padding = kernel / 2;
  return nn::LoRACompatibleConv(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding));
}

torch::nn::GroupNorm group_norm(int64_t groups, int64_t channels, double eps) {
  if (groups <= 0 || channels % groups != 0)
    fail("unet", "GroupNorm: " + std::to_string(channels) + " channels cannot be split into " +
                     std::to_string(groups) + " groups (norm_num_groups must divide every width)");
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(eps));
}

// A pointwise projection over channels-last tokens: a Linear, or the equivalent 1×1 conv.
at::Tensor pointwise(const at::Tensor& tokens, nn::LoRACompatibleConv& conv,
                     nn::LoRACompatibleLinear& linear) {
  return linear ? linear(tokens) : conv->forward_tokens(tokens);
}

}  // namespace

Activation parse_activation(const std::string& name, const std::string& what) {
  if (name == "silu" || name == "swish") return Activation::SiLU;
  if (name == "mish") return Activation::Mish;
  if (name == "gelu") return Activation::GELU;
  if (name == "relu") return Activation::ReLU;
  fail("config", what + " is \"" + name + "\"; expected silu, swish, mish, gelu or relu");
}

at::Tensor activate(const at::Tensor& x, Activation act, bool x_is_temporary) {
  const bool in_place = x_is_temporary && !at::GradMode::is_enabled();
  at::Tensor y = x;
  switch (act) {
    case Activation::SiLU:
      return in_place ? at::silu_(y) : at::silu(x);
    case Activation::Mish:
      return in_place ? at::mish_(y) : at::mish(x);
    case Activation::GELU:
      return at::gelu(x);
    case Activation::ReLU:
      return in_place ? at::relu_(y) : at::relu(x);
  }
  return x;
}

at::Tensor timestep_sinusoids(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double freq_shift) {
  const int64_t half = dim / 2;
  auto t = timesteps.to(at::kFloat);
  auto exponent = at::arange(half, t.options()) * (-std::log(10000.0));
  exponent = exponent / (static_cast<double>(half) - freq_shift);
  auto args = t.unsqueeze(1) * exponent.exp().unsqueeze(0);
  auto emb = flip_sin_to_cos ? at::cat({args.cos(), args.sin()}, -1)
                             : at::cat({args.sin(), args.cos()}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1});
  return emb;
}

// ---------------------------------------------------------------------------------------------

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_dim, int64_t dim, Activation act,
                                             std::optional<Activation> post_act)
    : act_(act), post_act_(post_act) {
  linear_1 = register_module("linear_1", nn::LoRACompatibleLinear(in_dim, dim));
  linear_2 = register_module("linear_2", nn::LoRACompatibleLinear(dim, dim));
}

at::Tensor TimestepEmbeddingImpl::forward(const at::Tensor& features) {
  auto h = linear_2(activate(linear_1(features), act_, true));
  return post_act_ ? activate(h, *post_act_, true) : h;
}

// ---------------------------------------------------------------------------------------------

AttentionImpl::AttentionImpl(const AttentionConfig& config) : config_(config) {
  const int64_t inner = config.heads * config.head_dim;
  const int64_t kv_dim =
      config.cross_attention_dim > 0 ? config.cross_attention_dim : config.query_dim;
  if (config.norm_groups > 0)
    group_norm = register_module(
        "group_norm", blocks::group_norm(config.norm_groups, config.query_dim, config.norm_eps));
  auto linear = [](int64_t in, int64_t out, bool bias) {
    return nn::LoRACompatibleLinear(torch::nn::LinearOptions(in, out).bias(bias));
  };
  to_q = register_module("to_q", linear(config.query_dim, inner, config.qkv_bias));
  to_k = register_module("to_k", linear(kv_dim, inner, config.qkv_bias));
  to_v = register_module("to_v", linear(kv_dim, inner, config.qkv_bias));
  auto to_out = container();
  to_out_0 = to_out->register_module("0", linear(inner, config.query_dim, true));
  register_module("to_out", to_out);
}

at::Tensor AttentionImpl::forward(const at::Tensor& tokens, const at::Tensor& context) {
  const at::Tensor& source = context.defined() ? context : tokens;
  auto q = nn::split_heads(to_q(tokens), config_.heads);
  auto k = nn::split_heads(to_k(source), config_.heads);
  auto v = nn::split_heads(to_v(source), config_.heads);
  at::Tensor out;
  const auto dtype = q.scalar_type();
  if (config_.upcast && (dtype == at::kHalf || dtype == at::kBFloat16))
    out = nn::attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat)).to(dtype);
  else
    out = nn::attention(q, k, v);
  return to_out_0(nn::merge_heads(out));
}

at::Tensor AttentionImpl::forward_spatial(const at::Tensor& x) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto normed = group_norm ? group_norm(x) : x;
  auto tokens = normed.view({b, c, h * w}).transpose(1, 2);
  auto out = forward(tokens).transpose(1, 2).reshape({b, c, h, w});
  return at::add(x, out);
}

// ---------------------------------------------------------------------------------------------

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t mult) {
  const int64_t inner = dim * mult;
  auto net = container();
  auto geglu = container();
  proj = geglu->register_module("proj", nn::LoRACompatibleLinear(dim, 2 * inner));
  net->register_module("0", geglu);
  out = net->register_module("2", nn::LoRACompatibleLinear(inner, dim));
  register_module("net", net);
}

// CPU inference runs the feed-forward over this many bytes of projection at a time: the UNet's
// 64² and 32² blocks otherwise allocate 40-80 MiB intermediates, which come as fresh pages from
// the system on every call and leave the cache. Measured on 2 cores: 1.2-1.5x faster, identical.
constexpr int64_t kFeedForwardChunkBytes = int64_t{6} << 20;
constexpr int64_t kFeedForwardMinChunkRows = 256;

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  if (at::GradMode::is_enabled() || !x.device().is_cpu()) {
    auto parts = proj(x).chunk(2, -1);
    return out(parts[0] * at::gelu(parts[1]));
  }
  const int64_t dim = x.size(-1), projected = proj->weight.size(0);
  const at::Tensor rows = x.reshape({-1, dim});
  const int64_t total = rows.size(0);
  const int64_t chunk = std::max(kFeedForwardMinChunkRows,
                                 kFeedForwardChunkBytes / (projected * static_cast<int64_t>(x.element_size())));
  auto feed = [&](const at::Tensor& part) {
    auto halves = proj(part).chunk(2, -1);
    return out(at::gelu(halves[1]).mul_(halves[0]));
  };
  if (total <= chunk) return feed(x);
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = out->weight.size(0);
  at::Tensor y = at::empty({total, sizes.back()}, x.options());
  for (int64_t first = 0; first < total; first += chunk) {
    const int64_t n = std::min(chunk, total - first);
    y.narrow(0, first, n).copy_(feed(rows.narrow(0, first, n)));
  }
  return y.view(sizes);
}

// ---------------------------------------------------------------------------------------------

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim,
                                                     int64_t cross_dim, bool only_cross_attention,
                                                     bool upcast)
    : only_cross_(only_cross_attention) {
  AttentionConfig self_cfg;
  self_cfg.query_dim = dim;
  self_cfg.cross_attention_dim = only_cross_attention ? cross_dim : 0;
  self_cfg.heads = heads;
  self_cfg.head_dim = head_dim;
  self_cfg.upcast = upcast;
  AttentionConfig cross_cfg = self_cfg;
  cross_cfg.cross_attention_dim = cross_dim;
  norm1 = register_module("norm1", nn::layer_norm(dim, 1e-5));
  attn1 = register_module("attn1", Attention(self_cfg));
  norm2 = register_module("norm2", nn::layer_norm(dim, 1e-5));
  attn2 = register_module("attn2", Attention(cross_cfg));
  norm3 = register_module("norm3", nn::layer_norm(dim, 1e-5));
  ff = register_module("ff", FeedForward(dim));
}

at::Tensor BasicTransformerBlockImpl::forward(at::Tensor x, const at::Tensor& context) {
  x = x + attn1(norm1(x), only_cross_ ? context : at::Tensor());
  x = x + attn2(norm2(x), context);
  return x + ff(norm3(x));
}

// ---------------------------------------------------------------------------------------------

Transformer2DModelImpl::Transformer2DModelImpl(const TransformerConfig& config) : config_(config) {
  const int64_t c = config.channels;
  if (config.heads <= 0 || c % config.heads != 0)
    fail("unet", "Transformer2DModel: " + std::to_string(c) + " channels cannot be split into " +
                     std::to_string(config.heads) + " attention heads");
  norm = register_module("norm", group_norm(config.norm_groups, c, 1e-6));
  if (config.use_linear_projection) {
    proj_in_linear = register_module("proj_in", nn::LoRACompatibleLinear(c, c));
  } else {
    proj_in_conv = register_module("proj_in", conv(c, c, 1));
  }
  transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.layers; ++i)
    transformer_blocks->push_back(
        BasicTransformerBlock(c, config.heads, c / config.heads, config.cross_attention_dim,
                              config.only_cross_attention, config.upcast));
  if (config.use_linear_projection) {
    proj_out_linear = register_module("proj_out", nn::LoRACompatibleLinear(c, c));
  } else {
    proj_out_conv = register_module("proj_out", conv(c, c, 1));
  }
}

at::Tensor Transformer2DModelImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto tokens = norm(x).permute({0, 2, 3, 1}).reshape({b, h * w, c});
  tokens = pointwise(tokens, proj_in_conv, proj_in_linear);
  for (const auto& block : *transformer_blocks)
    tokens = block->as<BasicTransformerBlock>()->forward(tokens, context);
  tokens = pointwise(tokens, proj_out_conv, proj_out_linear);
  // x first: the sum takes x's (contiguous NCHW) layout, not the permuted view's.
  return at::add(x, tokens.view({b, h, w, c}).permute({0, 3, 1, 2}));
}

// ---------------------------------------------------------------------------------------------

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetConfig& config) : config_(config) {
  norm1 = register_module("norm1", group_norm(config.groups, config.in_channels, config.eps));
  conv1 = register_module("conv1", conv(config.in_channels, config.out_channels, 3));
  if (config.temb_channels > 0)
    time_emb_proj = register_module("time_emb_proj",
                                    nn::LoRACompatibleLinear(config.temb_channels, config.out_channels));
  norm2 = register_module("norm2", group_norm(config.groups, config.out_channels, config.eps));
  conv2 = register_module("conv2", conv(config.out_channels, config.out_channels, 3));
  if (config.in_channels != config.out_channels)
    conv_shortcut =
        register_module("conv_shortcut", conv(config.in_channels, config.out_channels, 1));
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& x, const at::Tensor& temb) {
  auto h = conv1(activate(norm1(x), config_.act, true));
  if (time_emb_proj && temb.defined()) {
    auto t = time_emb_proj(activate(temb, config_.act));
    h.add_(t.unsqueeze(-1).unsqueeze(-1));
  }
  h = conv2(activate(norm2(h), config_.act, true));
  h.add_(conv_shortcut ? conv_shortcut(x) : x);
  if (config_.output_scale_factor != 1.0) h.div_(config_.output_scale_factor);
  return h;
}

// ---------------------------------------------------------------------------------------------

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding)
    : padding_(padding) {
  conv = register_module("conv", blocks::conv(channels, out_channels, 3, 2, padding));
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& x) {
  if (padding_ == 0) return conv(at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv(x);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv = register_module("conv", blocks::conv(channels, out_channels, 3));
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& x, std::optional<std::vector<int64_t>> size) {
  std::vector<int64_t> out_size = size ? *size : std::vector<int64_t>{2 * x.size(2), 2 * x.size(3)};
  return conv(F::interpolate(x, F::InterpolateFuncOptions().size(out_size).mode(torch::kNearest)));
}

// ---------------------------------------------------------------------------------------------

namespace {

ResnetBlock2D make_resnet(const BlockConfig& b, int64_t in, int64_t out) {
  ResnetConfig r;
  r.in_channels = in;
  r.out_channels = out;
  r.temb_channels = b.temb_channels;
  r.groups = b.groups;
  r.eps = b.eps;
  r.act = b.act;
  r.output_scale_factor = b.output_scale_factor;
  return ResnetBlock2D(r);
}

Transformer2DModel make_transformer(const BlockConfig& b, int64_t channels) {
  TransformerConfig t = *b.transformer;
  t.channels = channels;
  t.norm_groups = b.groups;
  return Transformer2DModel(t);
}

}  // namespace

DownBlockImpl::DownBlockImpl(const BlockConfig& config, int64_t downsample_padding) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  if (config.transformer) attentions = register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.layers; ++i) {
    resnets->push_back(make_resnet(config, i == 0 ? config.in_channels : config.out_channels,
                                   config.out_channels));
    if (attentions) attentions->push_back(make_transformer(config, config.out_channels));
  }
  if (downsample_padding >= 0) {
    downsamplers = register_module("downsamplers", torch::nn::ModuleList());
    downsamplers->push_back(
        Downsample2D(config.out_channels, config.out_channels, downsample_padding));
  }
}

at::Tensor DownBlockImpl::forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context,
                                  std::vector<at::Tensor>* skips) {
  for (size_t i = 0; i < resnets->size(); ++i) {
    x = resnets[i]->as<ResnetBlock2D>()->forward(x, temb);
    if (attentions) x = attentions[i]->as<Transformer2DModel>()->forward(x, context);
    if (skips) skips->push_back(x);
  }
  if (downsamplers) {
    x = downsamplers[0]->as<Downsample2D>()->forward(x);
    if (skips) skips->push_back(x);
  }
  return x;
}

MidBlockImpl::MidBlockImpl(const BlockConfig& config) : cross_(config.transformer.has_value()) {
  const int64_t c = config.in_channels;
  resnets = register_module("resnets", torch::nn::ModuleList());
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets->push_back(make_resnet(config, c, c));
  for (int64_t i = 0; i < config.layers; ++i) {
    if (cross_) {
      attentions->push_back(make_transformer(config, c));
    } else {
      AttentionConfig a;
      a.query_dim = c;
      a.heads = 1;
      a.head_dim = c;
      a.qkv_bias = true;
      a.norm_groups = config.groups;
      a.norm_eps = config.eps;
      attentions->push_back(Attention(a));
    }
    resnets->push_back(make_resnet(config, c, c));
  }
}

at::Tensor MidBlockImpl::forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context) {
  x = resnets[0]->as<ResnetBlock2D>()->forward(x, temb);
  for (size_t i = 0; i < attentions->size(); ++i) {
    if (cross_)
      x = attentions[i]->as<Transformer2DModel>()->forward(x, context);
    else
      x = attentions[i]->as<Attention>()->forward_spatial(x);
    x = resnets[i + 1]->as<ResnetBlock2D>()->forward(x, temb);
  }
  return x;
}

UpBlockImpl::UpBlockImpl(const BlockConfig& config, int64_t prev_channels, bool add_upsample) {
  const int64_t out = config.out_channels;
  resnets = register_module("resnets", torch::nn::ModuleList());
  if (config.transformer) attentions = register_module("attentions", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.layers; ++i) {
    int64_t in;
    if (prev_channels > 0)
      in = (i == 0 ? prev_channels : out) + (i == config.layers - 1 ? config.in_channels : out);
    else
      in = i == 0 ? config.in_channels : out;
    resnets->push_back(make_resnet(config, in, out));
    if (attentions) attentions->push_back(make_transformer(config, out));
  }
  if (add_upsample) {
    upsamplers = register_module("upsamplers", torch::nn::ModuleList());
    upsamplers->push_back(Upsample2D(out, out));
  }
}

at::Tensor UpBlockImpl::forward(at::Tensor x, const at::Tensor& temb, const at::Tensor& context,
                                std::vector<at::Tensor>* skips,
                                std::optional<std::vector<int64_t>> upsample_size) {
  for (size_t i = 0; i < resnets->size(); ++i) {
    if (skips) {
      x = at::cat({x, skips->back()}, 1);
      skips->pop_back();
    }
    x = resnets[i]->as<ResnetBlock2D>()->forward(x, temb);
    if (attentions) x = attentions[i]->as<Transformer2DModel>()->forward(x, context);
  }
  if (upsamplers) x = upsamplers[0]->as<Upsample2D>()->forward(x, std::move(upsample_size));
  return x;
}

// ---------------------------------------------------------------------------------------------

namespace {

BlockConfig unet_block_config(const UNet2DConditionConfig& c, int64_t in, int64_t out,
                              int64_t layers, bool cross, int64_t heads, int64_t cross_dim,
                              int64_t transformer_layers, bool only_cross) {
  BlockConfig b;
  b.in_channels = in;
  b.out_channels = out;
  b.temb_channels = unet_time_embed_dim(c);
  b.layers = layers;
  b.groups = c.norm_num_groups;
  b.eps = c.norm_eps;
  b.act = parse_activation(c.act_fn, "act_fn");
  if (cross) {
    TransformerConfig t;
    t.heads = heads;
    t.layers = transformer_layers;
    t.cross_attention_dim = cross_dim;
    t.use_linear_projection = c.use_linear_projection;
    t.only_cross_attention = only_cross;
    t.upcast = c.upcast_attention;
    b.transformer = t;
  }
  return b;
}

}  // namespace

int64_t unet_time_embed_dim(const UNet2DConditionConfig& c) {
  return c.time_embedding_dim > 0 ? c.time_embedding_dim : 4 * c.block_out_channels.at(0);
}

TimestepEmbedding make_unet_time_embedding(const UNet2DConditionConfig& c) {
  std::optional<Activation> post_act;
  if (!c.timestep_post_act.empty())
    post_act = parse_activation(c.timestep_post_act, "timestep_post_act");
  return TimestepEmbedding(c.block_out_channels.at(0), unet_time_embed_dim(c),
                           parse_activation(c.act_fn, "act_fn"), post_act);
}

DownBlock make_unet_down_block(const UNet2DConditionConfig& c, size_t i) {
  const auto& ch = c.block_out_channels;
  const bool final_block = i + 1 == ch.size();
  auto b = unet_block_config(c, ch.at(i == 0 ? 0 : i - 1), ch.at(i), c.layers_per_block.at(i),
                             c.down_block_types.at(i) == "CrossAttnDownBlock2D",
                             c.attention_heads.at(i), c.cross_attention_dim.at(i),
                             c.transformer_layers_per_block.at(i), c.only_cross_attention.at(i));
  return DownBlock(b, final_block ? -1 : c.downsample_padding);
}

MidBlock make_unet_mid_block(const UNet2DConditionConfig& c) {
  const int64_t ch = c.block_out_channels.back();
  auto b =
      unet_block_config(c, ch, ch, 1, true, c.attention_heads.back(), c.cross_attention_dim.back(),
                        c.transformer_layers_per_block.back(), false);
  b.output_scale_factor = c.mid_block_scale_factor;
  return MidBlock(b);
}

UpBlock make_unet_up_block(const UNet2DConditionConfig& c, size_t i) {
  // Up block i mirrors down block n-1-i: per-block lists are read reversed.
  const size_t n = c.block_out_channels.size();
  const size_t mirror = n - 1 - i;
  const int64_t prev = c.block_out_channels.at(i == 0 ? n - 1 : mirror + 1);
  const int64_t skip_in = c.block_out_channels.at(mirror == 0 ? 0 : mirror - 1);
  auto b = unet_block_config(
      c, skip_in, c.block_out_channels.at(mirror), c.layers_per_block.at(mirror) + 1,
      c.up_block_types.at(i) == "CrossAttnUpBlock2D", c.attention_heads.at(mirror),
      c.cross_attention_dim.at(mirror), c.transformer_layers_per_block.at(mirror),
      c.only_cross_attention.at(mirror));
  return UpBlock(b, prev, /*add_upsample=*/i + 1 < n);
}

}  // namespace kosmosg::models::blocks
