// EulerDiscreteScheduler and EulerAncestralDiscreteScheduler (diffusers v0.21.4).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "diffusion/internal.h"
#include "kosmosg/error.h"

namespace kosmosg::diffusion::detail {
namespace {

io::Json euler_defaults(bool ancestral) {
  auto d = common_defaults();
  d["prediction_type"] = "epsilon";
  if (!ancestral) {
    d["interpolation_type"] = "linear";
    d["use_karras_sigmas"] = false;
  }
  d["timestep_spacing"] = "linspace";
  d["steps_offset"] = 0;
  return d;
}

class Euler final : public Scheduler {
 public:
  Euler(const std::string& kind, const io::Json& file, bool ancestral)
      : Scheduler(kind, ancestral ? "EulerAncestralDiscreteScheduler" : "EulerDiscreteScheduler",
                  merge_config(euler_defaults(ancestral), file,
                               ancestral ? "EulerAncestralDiscreteScheduler" : "EulerDiscreteScheduler")),
        ancestral_(ancestral) {
    const std::string& what = class_name_;
    schedule_ = schedule_from_config(config_, what);
    prediction_type_ = ancestral ? prediction_type_of(config_, {"epsilon", "v_prediction"}, what)
                                 : prediction_type_of(config_, {"epsilon", "v_prediction", "sample", "original_sample"}, what);
    spacing_ = spacing_of(config_, what);
    steps_offset_ = io::config_require<int64_t>(config_, "steps_offset", what);
    if (!ancestral) {
      interpolation_ = io::config_require<std::string>(config_, "interpolation_type", what);
      if (interpolation_ != "linear" && interpolation_ != "log_linear")
        fail_here("interpolation_type '" + interpolation_ + "' is not supported (linear, log_linear)");
      karras_ = io::config_require<bool>(config_, "use_karras_sigmas", what);
    }
    // σ table √((1−ᾱ)/ᾱ) in float32; before set_timesteps the σ list is the table reversed + 0.
    const auto& acp = schedule_.alphas_cumprod;
    auto table = (at::rsub(acp, 1) / acp).pow(0.5);
    table_ = float_vector(table);
    log_table_ = float_vector(table.log());
    sigmas_.assign(table_.rbegin(), table_.rend());
    sigmas_.push_back(0.0f);
  }

  void set_timesteps(int64_t steps) override {
    check_steps(steps);
    const int64_t n_train = schedule_.num_train_timesteps;
    std::vector<float> ts32;  // upstream's float32 timesteps
    if (spacing_ == "linspace") {
      for (double v : np_linspace(0, static_cast<double>(n_train - 1), steps)) ts32.push_back(static_cast<float>(v));
      std::reverse(ts32.begin(), ts32.end());
    } else if (spacing_ == "leading") {
      const int64_t ratio = n_train / steps;
      for (int64_t i = steps - 1; i >= 0; --i)
        ts32.push_back(static_cast<float>(i * ratio) + static_cast<float>(steps_offset_));
    } else {  // trailing
      const double ratio = static_cast<double>(n_train) / static_cast<double>(steps);
      for (double v : np_arange(static_cast<double>(n_train), 0, -ratio))
        ts32.push_back(static_cast<float>(np_round(v)) - 1.0f);
    }
    std::vector<double> ts(ts32.begin(), ts32.end());

    std::vector<double> sig;
    if (interpolation_ == "log_linear") {
      auto s = at::linspace(static_cast<double>(std::log(table_.back())), static_cast<double>(std::log(table_.front())),
                            steps + 1, at::kFloat)
                   .exp();
      for (float v : float_vector(s)) sig.push_back(v);
    } else {
      sig = np_interp_index(ts, table_);
    }
    if (karras_) {
      sig = karras_sigmas(sig.front(), sig.back(), steps);
      ts.clear();
      for (double s : sig) ts.push_back(sigma_to_t(s, log_table_));  // float64, not rounded
    }
    sigmas_.clear();
    for (double s : sig) sigmas_.push_back(static_cast<float>(s));
    sigmas_.push_back(0.0f);
    timesteps_ = std::move(ts);
    num_inference_steps_ = steps;
  }

  bool integer_timesteps() const override { return false; }

  double init_noise_sigma() const override {
    const float max = *std::max_element(sigmas_.begin(), sigmas_.end());
    if (spacing_ == "linspace" || spacing_ == "trailing") return max;
    return std::sqrt(max * max + 1.0f);
  }

  at::Tensor scale_model_input(const at::Tensor& sample, size_t step_index) const override {
    timestep_at(step_index, "scale_model_input");
    const float sigma = sigmas_[step_index];
    return sample / static_cast<double>(std::sqrt(sigma * sigma + 1.0f));
  }

  bool needs_noise() const override { return ancestral_; }

  at::Tensor step(const at::Tensor& model_output, size_t step_index, const at::Tensor& sample,
                  const at::Tensor& noise) override {
    timestep_at(step_index, "step");
    const float sigma = sigmas_[step_index];
    const float sigma_next = sigmas_[step_index + 1];
    // No churn (s_churn 0): σ̂ = σ.
    const float sigma_hat = ancestral_ ? sigma : sigma * (0.0f + 1.0f);
    at::Tensor x0;
    if (prediction_type_ == "epsilon") {
      x0 = sample - model_output * static_cast<double>(sigma_hat);
    } else if (prediction_type_ == "v_prediction") {
      const float c_out = -sigma / std::sqrt(sigma * sigma + 1.0f);
      x0 = model_output * static_cast<double>(c_out) + sample / static_cast<double>(sigma * sigma + 1.0f);
    } else {  // sample / original_sample
      x0 = model_output;
    }
    const at::Tensor derivative = (sample - x0) / static_cast<double>(sigma_hat);
    if (!ancestral_) return sample + derivative * static_cast<double>(sigma_next - sigma_hat);

    const float from2 = sigma * sigma, to2 = sigma_next * sigma_next;
    const float sigma_up = std::sqrt(to2 * (from2 - to2) / from2);
    // to² − up² = to⁴/from² ≥ 0 exactly; clamp the rounding so it never turns into NaN.
    const float sigma_down = std::sqrt(std::max(to2 - sigma_up * sigma_up, 0.0f));
    at::Tensor prev = sample + derivative * static_cast<double>(sigma_down - sigma);
    return prev + step_noise(noise, model_output) * static_cast<double>(sigma_up);
  }

  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise, size_t step_index) const override {
    timestep_at(step_index, "add_noise");
    if (original.sizes() != noise.sizes())
      fail_here("add_noise: the noise has shape " + c10::str(noise.sizes()) + " but the sample has " +
                c10::str(original.sizes()));
    // σ cast to the sample's dtype first, as upstream.
    auto sigma = at::full({}, static_cast<double>(sigmas_[step_index]), at::kFloat)
                     .to(original.device(), original.scalar_type());
    return original + noise * sigma;
  }

 private:
  bool ancestral_;
  std::string spacing_, interpolation_ = "linear";
  int64_t steps_offset_ = 0;
  bool karras_ = false;
  std::vector<float> table_, log_table_;  // σ(t) for t = 0 … N−1 and its log, float32
  std::vector<float> sigmas_;             // σ per step + trailing 0, float32
};

}  // namespace

std::unique_ptr<Scheduler> make_euler(const std::string& kind, const io::Json& file, bool ancestral) {
  return std::make_unique<Euler>(kind, file, ancestral);
}

}  // namespace kosmosg::diffusion::detail
