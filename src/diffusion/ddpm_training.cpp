// DDPMScheduler's forward process (add_noise, get_velocity) and the training target.
#include <torch/torch.h>

#include "diffusion/internal.h"
#include "kosmosg/diffusion/scheduler.h"
#include "kosmosg/error.h"

namespace kosmosg::diffusion {
namespace {

const char* const kDdpmClass = "DDPMScheduler";

io::Json ddpm_defaults() {
  auto d = detail::common_defaults();
  d["variance_type"] = "fixed_small";
  d["clip_sample"] = true;
  d["prediction_type"] = "epsilon";
  d["thresholding"] = false;
  d["dynamic_thresholding_ratio"] = 0.995;
  d["clip_sample_range"] = 1.0;
  d["sample_max_value"] = 1.0;
  d["timestep_spacing"] = "leading";
  d["steps_offset"] = 0;
  return d;
}

}  // namespace

DDPMTraining::DDPMTraining(const io::Json& scheduler_config)
    : config_(detail::merge_config(ddpm_defaults(), scheduler_config, kDdpmClass)) {
  schedule_ = detail::schedule_from_config(config_, kDdpmClass, /*allow_sigmoid=*/true);
  prediction_type_ = detail::prediction_type_of(config_, {"epsilon", "v_prediction", "sample"}, kDdpmClass);
}

at::Tensor DDPMTraining::add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const {
  return detail::add_noise(schedule_, x0, noise, timesteps, "ddpm");
}

at::Tensor DDPMTraining::velocity(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const {
  if (!noise.defined() || noise.sizes() != x0.sizes())
    fail("ddpm", "the noise must have the samples' shape " + c10::str(x0.sizes()));
  auto [sqrt_a, sqrt_1ma] = detail::noising_coefficients(schedule_, x0, timesteps, "ddpm");
  return sqrt_a * noise - sqrt_1ma * x0;
}

at::Tensor DDPMTraining::target(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const {
  if (prediction_type_ == "v_prediction") return velocity(x0, noise, timesteps);
  if (!noise.defined() || noise.sizes() != x0.sizes())
    fail("ddpm", "the noise must have the samples' shape " + c10::str(x0.sizes()));
  return prediction_type_ == "sample" ? x0 : noise;
}

at::Tensor DDPMTraining::random_timesteps(int64_t batch, const at::Device& device,
                                          c10::optional<at::Generator> generator) const {
  if (batch < 1) fail("ddpm", "batch size " + std::to_string(batch) + " must be positive");
  // Drawn on the CPU so a seed gives the same timesteps on every device.
  return at::randint(0, schedule_.num_train_timesteps, {batch}, generator, at::TensorOptions().dtype(at::kLong))
      .to(device);
}

}  // namespace kosmosg::diffusion
