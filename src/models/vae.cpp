#include "kosmosg/models/vae.h"

#include <torch/torch.h>

#include "kosmosg/error.h"
#include "models/config_checks.h"
#include "models/unet_blocks.h"
#include "nn/onednn.h"

namespace kosmosg::models {
namespace {

const char* const kVaeConfig = "AutoencoderKL config";
constexpr double kEps = 1e-6;  // every VAE norm

[[noreturn]] void vae_config_error(const std::string& key, const std::string& why) {
  fail("config", std::string(kVaeConfig) + ": key '" + key + "' " + why);
}

void check_types(const std::vector<std::string>& types, const std::string& key,
                 const std::string& supported, size_t expected) {
  if (types.size() != expected)
    vae_config_error(key, "has " + std::to_string(types.size()) +
                          " entries; expected one per block_out_channels entry (" +
                          std::to_string(expected) + ")");
  for (const auto& t : types)
    if (t != supported)
      vae_config_error(key, "contains \"" + t + "\"; only \"" + supported + "\" is supported");
}

torch::nn::Conv2d conv3(int64_t in, int64_t out) {
  return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
}

blocks::BlockConfig block_config(const AutoencoderKLConfig& c, int64_t in, int64_t out,
                                 int64_t layers) {
  blocks::BlockConfig b;
  b.in_channels = in;
  b.out_channels = out;
  b.layers = layers;
  b.groups = c.norm_num_groups;
  b.eps = kEps;
  b.act = blocks::parse_activation(c.act_fn, "act_fn");
  return b;
}

}  // namespace

namespace blocks {

EncoderImpl::EncoderImpl(const AutoencoderKLConfig& c) : act_(parse_activation(c.act_fn, "act_fn")) {
  const auto& ch = c.block_out_channels;
  conv_in = register_module("conv_in", conv3(c.in_channels, ch[0]));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  for (size_t i = 0; i < ch.size(); ++i) {
    const bool final_block = i + 1 == ch.size();
    down_blocks->push_back(DownBlock(block_config(c, ch[i == 0 ? 0 : i - 1], ch[i], c.layers_per_block),
                                     final_block ? -1 : 0));
  }
  mid_block = register_module("mid_block", MidBlock(block_config(c, ch.back(), ch.back(), 1)));
  conv_norm_out = register_module(
      "conv_norm_out",
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, ch.back()).eps(kEps)));
  conv_out = register_module("conv_out", conv3(ch.back(), 2 * c.latent_channels));
}

// C0..Ck are block_out_channels, z latent_channels, f = 2^k the downsampling factor.
at::Tensor EncoderImpl::forward(const at::Tensor& images) {      // [N, 3, H, W]
  auto h = conv_in(images);                                       // [N, C0, H, W]
  // Block i ends at [N, Ci, H/2^(i+1), W/2^(i+1)]; the last one does not downsample.
  for (const auto& block : *down_blocks) h = block->as<DownBlock>()->forward(h, {}, {});
  h = mid_block(h);                                               // [N, Ck, H/f, W/f]
  return conv_out(activate(conv_norm_out(h), act_, true));        // [N, 2z, H/f, W/f]: mean, log-variance
}

DecoderImpl::DecoderImpl(const AutoencoderKLConfig& c) : act_(parse_activation(c.act_fn, "act_fn")) {
  std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  conv_in = register_module("conv_in", conv3(c.latent_channels, rev[0]));
  mid_block = register_module("mid_block", MidBlock(block_config(c, rev[0], rev[0], 1)));
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  for (size_t i = 0; i < rev.size(); ++i) {
    const bool final_block = i + 1 == rev.size();
    up_blocks->push_back(
        UpBlock(block_config(c, rev[i == 0 ? 0 : i - 1], rev[i], c.layers_per_block + 1), 0, !final_block));
  }
  conv_norm_out = register_module(
      "conv_norm_out",
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, rev.back()).eps(kEps)));
  conv_out = register_module("conv_out", conv3(rev.back(), c.out_channels));
}

at::Tensor DecoderImpl::forward(const at::Tensor& latents) {    // [N, z, h, w]
  auto h = mid_block(conv_in(latents));                           // [N, Ck, h, w]
  // The channels in reverse; each block but the last doubles the side: [N, C0, f·h, f·w] at the end.
  for (const auto& block : *up_blocks) h = block->as<UpBlock>()->forward(h, {}, {});
  return conv_out(activate(conv_norm_out(h), act_, true));        // [N, 3, f·h, f·w]
}

}  // namespace blocks

AutoencoderKLConfig AutoencoderKLConfig::from_json(const io::Json& json) {
  if (!json.is_object()) fail("config", std::string(kVaeConfig) + " is not a JSON object");
  AutoencoderKLConfig c;
  c.in_channels = io::config_value<int64_t>(json, "in_channels", c.in_channels, kVaeConfig);
  c.out_channels = io::config_value<int64_t>(json, "out_channels", c.out_channels, kVaeConfig);
  c.down_block_types = io::config_value(json, "down_block_types", c.down_block_types, kVaeConfig);
  c.up_block_types = io::config_value(json, "up_block_types", c.up_block_types, kVaeConfig);
  c.block_out_channels = io::config_value(json, "block_out_channels", c.block_out_channels, kVaeConfig);
  c.layers_per_block =
      io::config_value<int64_t>(json, "layers_per_block", c.layers_per_block, kVaeConfig);
  c.act_fn = io::config_value(json, "act_fn", c.act_fn, kVaeConfig);
  c.latent_channels = io::config_value<int64_t>(json, "latent_channels", c.latent_channels, kVaeConfig);
  c.norm_num_groups = io::config_value<int64_t>(json, "norm_num_groups", c.norm_num_groups, kVaeConfig);
  c.sample_size = io::config_value<int64_t>(json, "sample_size", c.sample_size, kVaeConfig);
  c.scaling_factor = io::config_value<double>(json, "scaling_factor", c.scaling_factor, kVaeConfig);
  c.force_upcast = io::config_value<bool>(json, "force_upcast", c.force_upcast, kVaeConfig);

  const size_t n = c.block_out_channels.size();
  if (n == 0) vae_config_error("block_out_channels", "is empty");
  check_types(c.down_block_types, "down_block_types", "DownEncoderBlock2D", n);
  check_types(c.up_block_types, "up_block_types", "UpDecoderBlock2D", n);
  blocks::parse_activation(c.act_fn, std::string(kVaeConfig) + ": act_fn");
  for (int64_t ch : c.block_out_channels)
    if (ch <= 0 || c.norm_num_groups <= 0 || ch % c.norm_num_groups != 0)
      vae_config_error("block_out_channels", "entry " + std::to_string(ch) +
                                             " is not a positive multiple of norm_num_groups (" +
                                             std::to_string(c.norm_num_groups) + ")");
  if (c.layers_per_block <= 0) vae_config_error("layers_per_block", "must be positive");
  if (c.latent_channels <= 0) vae_config_error("latent_channels", "must be positive");
  detail::require_at_most_max(c.block_out_channels, "block_out_channels", kVaeConfig);
  detail::require_at_most_max({c.in_channels, c.out_channels, c.layers_per_block, c.latent_channels, c.sample_size},
                              "in_channels, out_channels, layers_per_block, latent_channels or sample_size", kVaeConfig);
  return c;
}

at::Tensor DiagonalGaussian::std() const { return at::exp(logvar * 0.5); }

at::Tensor DiagonalGaussian::sample(const at::Tensor& noise) const {
  if (noise.sizes() != mean.sizes())
    fail("AutoencoderKL",
         "posterior noise has shape " + c10::str(noise.sizes()) + "; expected " + c10::str(mean.sizes()));
  return mean + std() * noise.to(mean.options());
}

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& config) : config_(config) {
  encoder = register_module("encoder", blocks::Encoder(config));
  decoder = register_module("decoder", blocks::Decoder(config));
  const int64_t z = config.latent_channels;
  quant_conv = register_module("quant_conv", torch::nn::Conv2d(2 * z, 2 * z, 1));
  post_quant_conv = register_module("post_quant_conv", torch::nn::Conv2d(z, z, 1));
}

DiagonalGaussian AutoencoderKLImpl::encode(const at::Tensor& images) {
  if (images.dim() != 4 || images.size(1) != config_.in_channels)
    fail("AutoencoderKL", "images have shape " + c10::str(images.sizes()) + "; expected [B, " +
                              std::to_string(config_.in_channels) + ", H, W]");
  auto moments = quant_conv(encoder(nn::onednn::channels_last_on_cpu(images))).contiguous();  // [N, 2z, H/f, W/f]
  auto parts = moments.chunk(2, 1);            // mean and log-variance, [N, z, H/f, W/f] each
  // diffusers' DiagonalGaussianDistribution clamps the log-variance, so exp() stays finite.
  return {parts[0], at::clamp(parts[1], -30.0, 20.0)};
}

at::Tensor AutoencoderKLImpl::decode(const at::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(1) != config_.latent_channels)
    fail("AutoencoderKL", "latents have shape " + c10::str(latents.sizes()) + "; expected [B, " +
                              std::to_string(config_.latent_channels) + ", h, w]");
  // [N, z, h, w] → [N, 3, f·h, f·w]
  return decoder(post_quant_conv(nn::onednn::channels_last_on_cpu(latents))).contiguous();
}

}  // namespace kosmosg::models
