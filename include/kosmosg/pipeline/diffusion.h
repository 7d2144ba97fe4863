#pragma once
// The frozen image decoder every model kind shares: SD1.5 UNet + VAE + a sampler loop with
// classifier-free guidance. Its conditions come from a ConditionEncoder (condition_encoder.h):
// the CLIP text encoder or Kosmos-G; Pipeline (pipeline.h) puts the two together.
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kosmosg/io/config.h"
#include "kosmosg/models/controlnet.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/models/vae.h"

namespace kosmosg::diffusion {
class Scheduler;
}

namespace kosmosg::pipeline {

struct SamplingOptions {
  std::string sampler = "dpmpp-2m";  // a kind from diffusion::scheduler_kinds()
  int64_t steps = 25;
  double guidance = 7.5;             // <= 1 disables classifier-free guidance
  bool show_progress = false;
  bool cuda_graph = true;  // on CUDA without ControlNets: the UNet captured once, replayed each step
};

// What one sampler step saw and produced (for tests and callers that track the loop).
struct StepInfo {
  size_t index;
  double timestep;
  const at::Tensor& model_input;  // the scaled [uncond; cond] batch given to the UNet
  const at::Tensor& noise_pred;   // after guidance
  const at::Tensor& latents;      // after the scheduler step
};

using StepCallback = std::function<void(const StepInfo&)>;

// A ControlNet steering the UNet with a control image (several add up).
struct ControlNetGuide {
  models::ControlNetModel model{nullptr};
  at::Tensor image;          // uint8 H×W×3 RGB, already preprocessed; resized to the output size
  double scale = 1.0;        // conditioning scale of its residuals
  double start = 0.0, end = 1.0;  // the share of the steps in which it acts, 0 <= start < end <= 1
  std::string name;          // for messages (its folder)
};

// One image to generate, whichever encoder makes the prompt's conditions.
struct GenerateOptions {
  std::string prompt;               // with Kosmos-G each "<i>" takes the next image
  std::vector<at::Tensor> images;   // uint8 H×W×3 RGB, in prompt order (Kosmos-G only)
  std::string negative;
  SamplingOptions sampling;
  int64_t width = 512, height = 512;
  uint64_t seed = 0;
  std::optional<at::Tensor> initial_latents;  // 1×4×h×w; replaces the seeded noise
  // Image-to-image: start from this uint8 H×W×3 RGB image (resized to width×height), noised to
  // the step where `strength` of the schedule remains. Strength 1 starts from pure noise, as
  // text-to-image does.
  std::optional<at::Tensor> init_image;
  double strength = 0.8;
  std::vector<ControlNetGuide> controlnets;
};

class Pipeline;

class DiffusionDecoder {
 public:
  DiffusionDecoder(models::UNet2DConditionModel unet, models::AutoencoderKL vae,
                   io::Json scheduler_config);

  // Loads unet/, vae/ and scheduler/ of a diffusers model folder.
  static DiffusionDecoder from_folder(const std::string& dir);

  // Runs the sampler from `latents` (B×4×h×w, unscaled noise: init_noise_sigma is applied here).
  // `condition` is [2B, L, D] ordered [unconditional × B; conditional × B] when guidance > 1,
  // else [B, L, D]. `generator` draws the noise ancestral samplers need. The ControlNets are
  // checked here; `options` by the scheduler.
  at::Tensor sample(const at::Tensor& condition, const at::Tensor& latents,
                    const SamplingOptions& options, at::Generator generator,
                    const StepCallback& on_step = {},
                    const std::vector<ControlNetGuide>& controlnets = {});

  // The one check of a GenerateOptions, before any expensive work: the size, guidance, sampler and
  // step count, image-to-image settings and each ControlNet's fit and settings. Errors about a
  // setting are SettingErrors naming it ("steps", "strength", ...).
  void check(const GenerateOptions& options) const;

  // Checks `options`, samples from the seeded noise (or options.initial_latents; with
  // options.init_image from that image, noised) with `condition` and decodes: final latents
  // (1×4×h×w) and the image in [-1, 1] (1×3×H×W).
  std::pair<at::Tensor, at::Tensor> generate(const at::Tensor& condition, const GenerateOptions& options,
                                             const StepCallback& on_step = {});

  // Latents → images in [-1, 1] (divides by the VAE's scaling factor first).
  at::Tensor decode(const at::Tensor& latents);

  // Images in [-1, 1] (N×3×H×W) → latents, scaled by the VAE's scaling factor; the posterior is
  // sampled with noise from `generator`.
  at::Tensor encode(const at::Tensor& images, at::Generator generator);

  // Initial noise for `count` images of `height`×`width` pixels, drawn on the CPU so a seed
  // gives the same image on every device.
  at::Tensor initial_latents(int64_t count, int64_t height, int64_t width, at::Generator generator) const;

  void to(const c10::Device& device, c10::ScalarType dtype);
  // Stores the UNet's blocks in `dtype` (half precision) for float32 compute; their convolution
  // weights are then no longer packed.
  void store_block_weights(c10::ScalarType dtype);
  // Sampling in float32 on the CPU packs its low-resolution convolution weights for oneDNN
  // (nn::set_weight_packing); call nn::set_weight_packing(*unet(), false) before saving or
  // training it.
  models::UNet2DConditionModel& unet() { return unet_; }
  models::AutoencoderKL& vae() { return vae_; }
  const io::Json& scheduler_config() const { return scheduler_config_; }
  int64_t vae_scale() const;  // pixels per latent cell (8 for SD)
  // The side, in pixels, the UNet was made for (its sample_size × vae_scale()).
  int64_t native_size() const;

 private:
  // A Pipeline checks the options before it encodes the prompt, then runs them.
  friend class Pipeline;
  // check(): the scheduler of the checked options, its timesteps set.
  std::unique_ptr<diffusion::Scheduler> prepare(const GenerateOptions& options) const;
  // generate() after prepare().
  std::pair<at::Tensor, at::Tensor> run(diffusion::Scheduler& scheduler, const at::Tensor& condition,
                                        const GenerateOptions& options, const StepCallback& on_step);
  // The sampler loop from timesteps()[first_step] on, with `x` already at that noise level. A
  // sampler's per-step noise comes from `generators`: one for the whole batch, or one per row.
  at::Tensor denoise(diffusion::Scheduler& scheduler, at::Tensor x, size_t first_step,
                     const at::Tensor& condition, const SamplingOptions& options,
                     const std::vector<at::Generator>& generators, const StepCallback& on_step,
                     const std::vector<ControlNetGuide>& controlnets);
  // Checks that `guide` fits the UNet and its settings are valid.
  void check_controlnet(const ControlNetGuide& guide) const;

  models::UNet2DConditionModel unet_;
  models::AutoencoderKL vae_;
  io::Json scheduler_config_;
  // Off once the blocks are stored in half precision: their float32 copies live only for a call.
  bool pack_unet_weights_ = true;
};

// Checks `width`×`height` for a model whose latents are `scale`× smaller: positive multiples of
// `scale` no larger than 4096 per side. Errors name the offending value. (DiffusionDecoder::check
// runs it; a caller that derives the size from a picture runs it before decoding the picture.)
void check_image_size(int64_t width, int64_t height, int64_t scale);

// Images in [-1, 1] (N×3×H×W) → uint8 N×H×W×3, as diffusers' numpy_to_pil rounds them.
at::Tensor to_uint8_images(const at::Tensor& images);

}  // namespace kosmosg::pipeline
