#pragma once
// Kosmos-G's score-distillation loss (the official Diffusionmodel.forward): the frozen UNet's
// denoising error on noised target latents, with the condition replaced by the null embedding
// for a random 10 % of the samples (classifier-free guidance training). The t2i stage trains the
// UNet itself with the same loss.
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "kosmosg/diffusion/scheduler.h"
#include "kosmosg/models/unet.h"

namespace kosmosg::train {

// The forward's random draws, separate so a caller (or a test) can supply them.
struct DiffusionLossDraws {
  at::Tensor noise;      // like the latents
  at::Tensor timesteps;  // int64 [B] in [0, N)
  at::Tensor random_p;   // float [B] in [0, 1): rows below the drop rate use the null condition
};

struct DiffusionLossOutput {
  at::Tensor loss;            // scalar: Σ over the batch of sample_loss
  at::Tensor sample_loss;     // float [B]: each sample's mean squared error, Min-SNR weighted when on
  at::Tensor noisy_latents;   // [B, 4, h, w]
  at::Tensor unet_condition;  // [B, L, D] after the null replacement
  at::Tensor model_pred;      // [B, 4, h, w]
};

class DiffusionLoss {
 public:
  // `unet_dtype` is the frozen UNet's storage dtype: it runs in it with autocast off (the policy
  // for frozen parts in half precision), and its prediction is compared in float32. A UNet that
  // trains (`unet_trains`: the t2i stage) keeps float32 weights and runs under the caller's autocast.
  // `snr_gamma` > 0 weights each sample's error by Min-SNR-γ (Hang et al. 2023; diffusers'
  // --snr_gamma): min(SNR_t, γ) / SNR_t for ε, / (SNR_t + 1) for v, so that the many nearly
  // noise-free timesteps stop dominating; 0 keeps the official unweighted loss.
  // `noise_offset` > 0 adds that much of one normal per sample and channel to the noise (offset
  // noise, diffusers' --noise_offset), so that the model cannot read an image's mean colour from
  // the nearly pure noise of the last timesteps, as it would from SD's nonzero terminal SNR.
  DiffusionLoss(models::UNet2DConditionModel unet, diffusion::DDPMTraining noise,
                double condition_drop_rate = 0.1, c10::ScalarType unet_dtype = c10::kFloat,
                bool unet_trains = false, double snr_gamma = 0.0, double noise_offset = 0.0);

  // Draws noise (then its offset, when on), timesteps and drop probabilities for `latents` from
  // `generator` (on the CPU, so a seed reproduces on every device).
  DiffusionLossDraws draw(const at::Tensor& latents, at::Generator generator) const;

  // latents: VAE latents already scaled by 0.18215; condition [B, L, D]; null_condition [1, L, D].
  DiffusionLossOutput forward(const at::Tensor& latents, const at::Tensor& condition,
                              const at::Tensor& null_condition, const DiffusionLossDraws& draws);

  // Which rows of `draws` take the null condition (bool [B]): those drawn below the drop rate.
  at::Tensor dropped(const DiffusionLossDraws& draws) const;

  // sample_loss of rows `rows` (int64 [R]) of a forward's batch had the UNet been given
  // `condition` [R, L, D] instead: the same noisy latents, timesteps and weights.
  at::Tensor rows_loss(const DiffusionLossOutput& out, const at::Tensor& latents, const DiffusionLossDraws& draws,
                       const at::Tensor& rows, const at::Tensor& condition);

 private:
  at::Tensor predict(const at::Tensor& noisy_latents, const at::Tensor& timesteps, const at::Tensor& condition);
  at::Tensor weighted_error(const at::Tensor& prediction, const at::Tensor& latents, const at::Tensor& noise,
                            const at::Tensor& timesteps) const;

  models::UNet2DConditionModel unet_;
  diffusion::DDPMTraining noise_;
  double drop_rate_;
  c10::ScalarType unet_dtype_;
  bool unet_trains_;
  double noise_offset_;
  at::Tensor snr_weights_;  // per training timestep, float [N]; undefined: unweighted
};

}  // namespace kosmosg::train
