#pragma once
// Stable Diffusion's image autoencoder: diffusers' AutoencoderKL (v0.21.4 semantics), parameters
// under the diffusers state-dict names, built from a diffusers vae/config.json.
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

#include "kosmosg/io/config.h"

namespace kosmosg::models {

namespace vae_detail {
class EncoderImpl;
class DecoderImpl;
}  // namespace vae_detail

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

// diffusers AutoencoderKL: encoder, quant_conv, post_quant_conv, decoder.
class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);

  // Images [B, in_channels, H, W] (in [-1, 1]) → posterior over [B, latent, H/f, W/f] latents.
  DiagonalGaussian encode(const at::Tensor& images);
  // Latents [B, latent, h, w] (unscaled: divide by scaling_factor first) → images.
  at::Tensor decode(const at::Tensor& latents);

  const AutoencoderKLConfig& config() const { return config_; }

 private:
  AutoencoderKLConfig config_;
  std::shared_ptr<vae_detail::EncoderImpl> encoder_;
  std::shared_ptr<vae_detail::DecoderImpl> decoder_;
  torch::nn::Conv2d quant_conv{nullptr}, post_quant_conv{nullptr};
};
TORCH_MODULE(AutoencoderKL);

}  // namespace kosmosg::models
