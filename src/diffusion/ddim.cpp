// DDIMScheduler (diffusers v0.21.4), deterministic (eta 0).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "diffusion/internal.h"
#include "kosmosg/error.h"

namespace kosmosg::diffusion::detail {
namespace {

const char* const kDdimClass = "DDIMScheduler";

io::Json ddim_defaults() {
  auto d = common_defaults();
  d["clip_sample"] = true;
  d["set_alpha_to_one"] = true;
  d["steps_offset"] = 0;
  d["prediction_type"] = "epsilon";
  d["thresholding"] = false;
  d["dynamic_thresholding_ratio"] = 0.995;
  d["clip_sample_range"] = 1.0;
  d["sample_max_value"] = 1.0;
  d["timestep_spacing"] = "leading";
  d["rescale_betas_zero_snr"] = false;
  return d;
}

class DDIM final : public Scheduler {
 public:
  DDIM(const std::string& kind, const io::Json& file)
      : Scheduler(kind, kDdimClass, merge_config(ddim_defaults(), file, kDdimClass)) {
    schedule_ = schedule_from_config(config_, kDdimClass);
    prediction_type_ = prediction_type_of(config_, {"epsilon", "v_prediction", "sample"}, kDdimClass);
    spacing_ = spacing_of(config_, kDdimClass);
    steps_offset_ = io::config_require<int64_t>(config_, "steps_offset", kDdimClass);
    clip_sample_ = io::config_require<bool>(config_, "clip_sample", kDdimClass);
    clip_range_ = io::config_require<double>(config_, "clip_sample_range", kDdimClass);
    reject_true(config_, "thresholding", kDdimClass, "dynamic thresholding is for pixel-space models");
    final_alpha_cumprod_ = io::config_require<bool>(config_, "set_alpha_to_one", kDdimClass) ? 1.0f : schedule_.acp[0];
  }

  void set_timesteps(int64_t steps) override {
    check_steps(steps);
    const int64_t n_train = schedule_.num_train_timesteps;
    std::vector<double> ts;
    if (spacing_ == "linspace") {
      for (double v : np_linspace(0, static_cast<double>(n_train - 1), steps))
        ts.push_back(static_cast<double>(static_cast<int64_t>(np_round(v))));
      std::reverse(ts.begin(), ts.end());
    } else if (spacing_ == "leading") {
      const int64_t ratio = n_train / steps;
      for (int64_t i = steps - 1; i >= 0; --i) ts.push_back(static_cast<double>(i * ratio + steps_offset_));
    } else {  // trailing
      const double ratio = static_cast<double>(n_train) / static_cast<double>(steps);
      for (double v : np_arange(static_cast<double>(n_train), 0, -ratio))
        ts.push_back(static_cast<double>(static_cast<int64_t>(np_round(v)) - 1));
    }
    check_timestep_range(ts, steps, spacing_, steps_offset_);
    timesteps_ = std::move(ts);
    num_inference_steps_ = steps;
  }

  at::Tensor step(const at::Tensor& model_output, size_t step_index, const at::Tensor& sample,
                  const at::Tensor& /*noise*/) override {
    const auto t = static_cast<int64_t>(timestep_at(step_index, "step"));
    const int64_t prev_t = t - schedule_.num_train_timesteps / num_inference_steps_;
    const float a = schedule_.alpha_cumprod(t);
    const float a_prev = prev_t >= 0 ? schedule_.alpha_cumprod(prev_t) : final_alpha_cumprod_;
    const float b = 1.0f - a;
    const double sa = std::sqrt(a), sb = std::sqrt(b);  // float32 square roots, as upstream
    at::Tensor x0, eps;
    if (prediction_type_ == "epsilon") {
      x0 = (sample - model_output * sb) / sa;
      eps = model_output;
    } else if (prediction_type_ == "sample") {
      x0 = model_output;
      eps = (sample - x0 * sa) / sb;
    } else {  // v_prediction
      x0 = sample * sa - model_output * sb;
      eps = model_output * sa + sample * sb;
    }
    if (clip_sample_) x0 = x0.clamp(-clip_range_, clip_range_);
    // eta = 0: the variance term vanishes; direction = √(1 − ᾱ_prev)·ε.
    const float direction = std::sqrt(1.0f - a_prev - 0.0f);
    return x0 * static_cast<double>(std::sqrt(a_prev)) + eps * static_cast<double>(direction);
  }

 private:
  std::string spacing_;
  int64_t steps_offset_ = 0;
  bool clip_sample_ = false;
  double clip_range_ = 1.0;
  float final_alpha_cumprod_ = 1.0f;
};

}  // namespace

std::unique_ptr<Scheduler> make_ddim(const std::string& kind, const io::Json& file) {
  return std::make_unique<DDIM>(kind, file);
}

}  // namespace kosmosg::diffusion::detail
