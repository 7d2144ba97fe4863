#pragma once
// Stable Diffusion's image autoencoder: diffusers' AutoencoderKL (v0.21.4 semantics), parameters
// under the diffusers state-dict names, built from a diffusers vae/config.json.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "kosmosg/io/config.h"
#include "kosmosg/models/unet_blocks.h"

namespace kosmosg::models {

// The AutoencoderKL config keys, with the class defaults for omitted keys.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types{"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types{"UpDecoderBlock2D"};
  std::vector<int64_t> block_out_channels{64};
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;
  // Latents are multiplied by this after encode and divided by it before decode (by callers).
  double scaling_factor = 0.18215;
  bool force_upcast = true;

  // Reads a diffusers config.json object; unsupported block types are errors naming the key.
  static AutoencoderKLConfig from_json(const io::Json& json);
};

// The posterior q(z|x): a diagonal Gaussian with logvar clamped to [-30, 20].
struct DiagonalGaussian {
  at::Tensor mean, logvar;
  // exp(logvar / 2).
  at::Tensor std() const;
  // mean + std · noise (`noise` ~ N(0, 1), shaped like mean).
  at::Tensor sample(const at::Tensor& noise) const;
};

namespace blocks {

// diffusers vae.Encoder: conv_in, down_blocks (DownEncoderBlock2D), mid_block, conv_norm_out,
// conv_out to 2·latent_channels (mean and logvar).
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const AutoencoderKLConfig& config);
  at::Tensor forward(const at::Tensor& images);

  torch::nn::Conv2d conv_in{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};
  MidBlock mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};

 private:
  Activation act_;
};
TORCH_MODULE(Encoder);

// diffusers vae.Decoder: conv_in, mid_block, up_blocks (UpDecoderBlock2D), conv_norm_out,
// conv_out.
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const AutoencoderKLConfig& config);
  at::Tensor forward(const at::Tensor& latents);

  torch::nn::Conv2d conv_in{nullptr};
  MidBlock mid_block{nullptr};
  torch::nn::ModuleList up_blocks{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};

 private:
  Activation act_;
};
TORCH_MODULE(Decoder);

}  // namespace blocks

// diffusers AutoencoderKL: encoder, quant_conv, post_quant_conv, decoder.
class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);

  // Images [B, in_channels, H, W] (in [-1, 1]) → posterior over [B, latent, H/f, W/f] latents.
  DiagonalGaussian encode(const at::Tensor& images);
  // Latents [B, latent, h, w] (unscaled: divide by scaling_factor first) → images.
  at::Tensor decode(const at::Tensor& latents);

  const AutoencoderKLConfig& config() const { return config_; }

  blocks::Encoder encoder{nullptr};
  blocks::Decoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};

 private:
  AutoencoderKLConfig config_;
};
TORCH_MODULE(AutoencoderKL);

}  // namespace kosmosg::models
