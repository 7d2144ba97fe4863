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
  out.unet_condition = at::where(dropped(draws).view({-1, 1, 1}), null_condition[0].unsqueeze(0).to(condition.dtype()), condition);
  out.model_pred = predict(out.noisy_latents, draws.timesteps, out.unet_condition);
  out.sample_loss = weighted_error(out.model_pred, latents, draws.noise, draws.timesteps);
  out.loss = out.sample_loss.sum();
  return out;
}

at::Tensor DiffusionLoss::dropped(const DiffusionLossDraws& draws) const { return draws.random_p < drop_rate_; }

at::Tensor DiffusionLoss::rows_loss(const DiffusionLossOutput& out, const at::Tensor& latents,
                                    const DiffusionLossDraws& draws, const at::Tensor& rows,
                                    const at::Tensor& condition) {
  if (condition.size(0) != rows.size(0))
    fail("diffusion_loss", "condition has " + std::to_string(condition.size(0)) + " rows for " +
                               std::to_string(rows.size(0)) + " row indices");
  const at::Tensor index = rows.to(latents.device());
  const at::Tensor timesteps = draws.timesteps.index_select(0, index);
  const at::Tensor prediction = predict(out.noisy_latents.index_select(0, index), timesteps, condition);
  return weighted_error(prediction, latents.index_select(0, index), draws.noise.index_select(0, index), timesteps);
}

at::Tensor DiffusionLoss::predict(const at::Tensor& noisy_latents, const at::Tensor& timesteps,
                                  const at::Tensor& condition) {
  if (unet_trains_) return unet_->forward(noisy_latents, timesteps, condition);
  nn::AutocastGuard no_autocast(noisy_latents.device().type(), at::kFloat);
  return unet_->forward(noisy_latents.to(unet_dtype_), timesteps, condition.to(unet_dtype_));
}

at::Tensor DiffusionLoss::weighted_error(const at::Tensor& prediction, const at::Tensor& latents,
                                         const at::Tensor& noise, const at::Tensor& timesteps) const {
  const at::Tensor target = noise_.target(latents, noise, timesteps);
  at::Tensor per_sample = (prediction.to(at::kFloat) - target.to(at::kFloat)).pow(2).flatten(1).mean(1);
  if (snr_weights_.defined())
    per_sample = per_sample * snr_weights_.index_select(0, timesteps.to(at::kCPU)).to(per_sample.device());
  return per_sample;
}

}  // namespace kosmosg::train
