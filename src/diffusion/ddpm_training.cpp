// DDPMScheduler's forward process (add_noise, get_velocity) and the training target.
#include <torch/torch.h>

#include "diffusion/internal.h"
#include "kosmosg/diffusion/scheduler.h"
#include "kosmosg/error.h"

namespace kosmosg::diffusion {
namespace {

const char* const kClass = "DDPMScheduler";

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
    : config_(detail::merge_config(ddpm_defaults(), scheduler_config, kClass)) {
  schedule_ = detail::schedule_from_config(config_, kClass, /*allow_sigmoid=*/true);
  prediction_type_ = detail::prediction_type_of(config_, {"epsilon", "v_prediction", "sample"}, kClass);
}

std::pair<at::Tensor, at::Tensor> DDPMTraining::coefficients(const at::Tensor& x, const at::Tensor& timesteps) const {
  const std::string where = "ddpm";
  if (!x.defined() || x.dim() < 1) fail(where, "the samples must be a tensor with a batch dimension");
  if (!timesteps.defined()) fail(where, "no timesteps given");
  if (at::isFloatingType(timesteps.scalar_type()) || timesteps.scalar_type() == at::kBool)
    fail(where, std::string("timesteps must be integers, got ") + c10::toString(timesteps.scalar_type()));
  const int64_t k = timesteps.numel();
  if (k != 1 && k != x.size(0))
    fail(where, "got " + std::to_string(k) + " timesteps for a batch of " + std::to_string(x.size(0)) +
                    " (give one per item, or one for all)");
  auto t = timesteps.to(x.device(), at::kLong).flatten();
  const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
  const int64_t n = schedule_.num_train_timesteps;
  if (lo < 0 || hi >= n)
    fail(where, "timesteps span [" + std::to_string(lo) + ", " + std::to_string(hi) + "] but must lie in [0, " +
                    std::to_string(n - 1) + "]");
  // Upstream casts ᾱ to the sample's dtype and device, then indexes.
  auto a = schedule_.alphas_cumprod.to(x.device(), x.scalar_type()).index_select(0, t);
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = k;
  return {a.pow(0.5).view(shape), at::rsub(a, 1).pow(0.5).view(shape)};
}

at::Tensor DDPMTraining::add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const {
  if (!noise.defined() || noise.sizes() != x0.sizes())
    fail("ddpm", "the noise must have the samples' shape " + c10::str(x0.sizes()));
  auto [sqrt_a, sqrt_1ma] = coefficients(x0, timesteps);
  return sqrt_a * x0 + sqrt_1ma * noise;
}

at::Tensor DDPMTraining::velocity(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const {
  if (!noise.defined() || noise.sizes() != x0.sizes())
    fail("ddpm", "the noise must have the samples' shape " + c10::str(x0.sizes()));
  auto [sqrt_a, sqrt_1ma] = coefficients(x0, timesteps);
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
