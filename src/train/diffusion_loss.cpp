#include "kosmosg/train/diffusion_loss.h"

#include "kosmosg/error.h"
#include "kosmosg/nn/autocast.h"

namespace kosmosg::train {

namespace {

// Min-SNR-γ's weight of each training timestep (float [N], CPU); undefined when γ is 0 (off).
at::Tensor min_snr_weights(const diffusion::DDPMTraining& noise, double snr_gamma) {
  if (!(snr_gamma >= 0)) fail("diffusion_loss", "snr_gamma is " + std::to_string(snr_gamma) + ", expected 0 (off) or more");
  if (snr_gamma == 0) return {};
  const at::Tensor alpha_bar = noise.alphas_cumprod().to(at::kDouble);
  const at::Tensor snr = alpha_bar / (1 - alpha_bar);
  const at::Tensor clipped = at::clamp_max(snr, snr_gamma);
  const std::string& type = noise.prediction_type();
  const at::Tensor weights = type == "v_prediction" ? clipped / (snr + 1) : type == "sample" ? clipped : clipped / snr;
  return weights.to(at::kFloat);
}

}  // namespace

DiffusionLoss::DiffusionLoss(models::UNet2DConditionModel unet, diffusion::DDPMTraining noise,
                             double condition_drop_rate, c10::ScalarType unet_dtype, bool unet_trains, double snr_gamma,
                             double noise_offset)
    : unet_(std::move(unet)),
      noise_(std::move(noise)),
      drop_rate_(condition_drop_rate),
      unet_dtype_(unet_dtype),
      unet_trains_(unet_trains),
      noise_offset_(noise_offset),
      snr_weights_(min_snr_weights(noise_, snr_gamma)) {
  if (!(noise_offset >= 0 && noise_offset <= 1))
    fail("diffusion_loss", "noise_offset is " + std::to_string(noise_offset) + ", expected 0 (off) to 1");
}

DiffusionLossDraws DiffusionLoss::draw(const at::Tensor& latents, at::Generator generator) const {
  const auto cpu_float = at::TensorOptions().dtype(at::kFloat);
  DiffusionLossDraws d;
  at::Tensor noise = at::randn(latents.sizes(), generator, cpu_float);
  // Drawn right after the noise, as diffusers' train_text_to_image does; no draw when off, so
  // the other draws stay those of the official recipe.
  if (noise_offset_ > 0)
    noise = noise + noise_offset_ * at::randn({latents.size(0), latents.size(1), 1, 1}, generator, cpu_float);
  d.noise = noise.to(latents.options());
  d.timesteps = noise_.random_timesteps(latents.size(0), latents.device(), generator);
  d.random_p = at::rand({latents.size(0)}, generator, cpu_float).to(latents.device());
  return d;
}

DiffusionLossOutput DiffusionLoss::forward(const at::Tensor& latents, const at::Tensor& condition,
                                           const at::Tensor& null_condition,
                                           const DiffusionLossDraws& draws) {
  if (condition.size(0) != latents.size(0))
    fail("diffusion_loss", "condition has " + std::to_string(condition.size(0)) + " rows for " +
                               std::to_string(latents.size(0)) + " latents");
  DiffusionLossOutput out;
  out.noisy_latents = noise_.add_noise(latents, draws.noise, draws.timesteps);
  const at::Tensor dropped = (draws.random_p < drop_rate_).view({-1, 1, 1});
  out.unet_condition = at::where(dropped, null_condition[0].unsqueeze(0).to(condition.dtype()), condition);
  if (unet_trains_) {
    out.model_pred = unet_->forward(out.noisy_latents, draws.timesteps, out.unet_condition);
  } else {
    nn::AutocastGuard no_autocast(latents.device().type(), at::kFloat);
    out.model_pred = unet_->forward(out.noisy_latents.to(unet_dtype_), draws.timesteps,
                                    out.unet_condition.to(unet_dtype_));
  }
  const at::Tensor target = noise_.target(latents, draws.noise, draws.timesteps);
  at::Tensor per_sample = (out.model_pred.to(at::kFloat) - target.to(at::kFloat)).pow(2).flatten(1).mean(1);
  if (snr_weights_.defined())
    per_sample = per_sample * snr_weights_.index_select(0, draws.timesteps.to(at::kCPU)).to(per_sample.device());
  out.loss = per_sample.sum();
  return out;
}

}  // namespace kosmosg::train
