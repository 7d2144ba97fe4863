// DPMSolverMultistepScheduler (diffusers v0.21.4): DPM-Solver++ / DPM-Solver, orders 1–3,
// midpoint or Heun second-order updates, optional Karras sigmas, and the stochastic
// SDE-DPM-Solver++ (orders 1–2, "DPM++ 2M SDE"). The first-order sde-dpmsolver is not supported.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "diffusion/internal.h"
#include "kosmosg/error.h"

namespace kosmosg::diffusion::detail {
namespace {

const char* const kDpmSolverClass = "DPMSolverMultistepScheduler";

io::Json dpm_defaults() {
  auto d = common_defaults();
  d["solver_order"] = 2;
  d["prediction_type"] = "epsilon";
  d["thresholding"] = false;
  d["dynamic_thresholding_ratio"] = 0.995;
  d["sample_max_value"] = 1.0;
  d["algorithm_type"] = "dpmsolver++";
  d["solver_type"] = "midpoint";
  d["lower_order_final"] = true;
  d["use_karras_sigmas"] = false;
  d["lambda_min_clipped"] = -std::numeric_limits<double>::infinity();
  d["variance_type"] = nullptr;
  d["timestep_spacing"] = "linspace";
  d["steps_offset"] = 0;
  return d;
}

class DPMSolver final : public Scheduler {
 public:
  DPMSolver(const std::string& kind, const io::Json& file, const io::Json& forced)
      : Scheduler(kind, kDpmSolverClass, merge_config(dpm_defaults(), file, kDpmSolverClass)) {
    config_.update(forced);
    schedule_ = schedule_from_config(config_, kDpmSolverClass);
    prediction_type_ = prediction_type_of(config_, {"epsilon", "v_prediction", "sample"}, kDpmSolverClass);
    spacing_ = spacing_of(config_, kDpmSolverClass);
    steps_offset_ = io::config_require<int64_t>(config_, "steps_offset", kDpmSolverClass);
    order_ = io::config_require<int64_t>(config_, "solver_order", kDpmSolverClass);
    if (order_ < 1 || order_ > 3)
      fail_here("solver_order " + std::to_string(order_) + " is not supported (1, 2 or 3)");
    algorithm_ = io::config_require<std::string>(config_, "algorithm_type", kDpmSolverClass);
    if (algorithm_ == "deis") algorithm_ = "dpmsolver++";  // upstream re-registers it so
    if (algorithm_ != "dpmsolver++" && algorithm_ != "dpmsolver" && algorithm_ != "sde-dpmsolver++")
      fail_here("algorithm_type '" + algorithm_ + "' is not supported (dpmsolver++, dpmsolver, sde-dpmsolver++)");
    sde_ = algorithm_ == "sde-dpmsolver++";
    if (sde_ && order_ > 2)  // upstream's third-order update has no SDE form
      fail_here("solver_order " + std::to_string(order_) + " is not supported with sde-dpmsolver++ (1 or 2)");
    config_["algorithm_type"] = algorithm_;
    solver_type_ = io::config_require<std::string>(config_, "solver_type", kDpmSolverClass);
    if (solver_type_ == "logrho" || solver_type_ == "bh1" || solver_type_ == "bh2") solver_type_ = "midpoint";
    if (solver_type_ != "midpoint" && solver_type_ != "heun")
      fail_here("solver_type '" + solver_type_ + "' is not supported (midpoint, heun)");
    config_["solver_type"] = solver_type_;
    lower_order_final_ = io::config_require<bool>(config_, "lower_order_final", kDpmSolverClass);
    karras_ = io::config_require<bool>(config_, "use_karras_sigmas", kDpmSolverClass);
    lambda_min_clipped_ = io::config_require<double>(config_, "lambda_min_clipped", kDpmSolverClass);
    reject_true(config_, "thresholding", kDpmSolverClass, "dynamic thresholding is for pixel-space models");
    const auto variance = io::config_value<std::string>(config_, "variance_type", "", kDpmSolverClass);
    if (!variance.empty())
      fail_here("variance_type '" + variance + "' is not supported (only models without learned variance)");

    // VP-type coefficient tables, float32 as upstream.
    const auto& acp = schedule_.alphas_cumprod;
    auto alpha_t = acp.sqrt();
    auto sigma_t = at::rsub(acp, 1).sqrt();
    alpha_ = float_vector(alpha_t);
    sigma_ = float_vector(sigma_t);
    lambda_ = float_vector(alpha_t.log() - sigma_t.log());
    history_.assign(static_cast<size_t>(order_), at::Tensor());
  }

  void set_timesteps(int64_t steps) override {
    check_steps(steps);
    const int64_t n_train = schedule_.num_train_timesteps;
    // searchsorted(flip(λ), lambda_min_clipped): the entries of the flipped table below it.
    int64_t clipped = 0;
    for (auto it = lambda_.rbegin(); it != lambda_.rend() && static_cast<double>(*it) < lambda_min_clipped_; ++it)
      ++clipped;
    const int64_t last = n_train - clipped;

    std::vector<int64_t> ts;
    if (spacing_ == "linspace") {
      auto v = np_linspace(0, static_cast<double>(last - 1), steps + 1);
      for (size_t i = v.size() - 1; i >= 1; --i) ts.push_back(static_cast<int64_t>(np_round(v[i])));
    } else if (spacing_ == "leading") {
      const int64_t ratio = last / (steps + 1);
      for (int64_t i = steps; i >= 1; --i) ts.push_back(i * ratio + steps_offset_);
    } else {  // trailing
      const double ratio = static_cast<double>(n_train) / static_cast<double>(steps);
      for (double v : np_arange(static_cast<double>(last), 0, -ratio))
        ts.push_back(static_cast<int64_t>(np_round(v)) - 1);
    }

    if (karras_) {
      // σ table √((1−ᾱ)/ᾱ) in float32; its log in float32; Karras σs from σ(0) to σ(N−1)
      // (upstream's order), mapped back to timesteps, rounded, then flipped to descending.
      const auto& acp = schedule_.alphas_cumprod;
      auto sigmas_t = (at::rsub(acp, 1) / acp).pow(0.5);
      const auto sigmas = float_vector(sigmas_t);
      const auto log_sigmas = float_vector(sigmas_t.log());
      const auto k = karras_sigmas(sigmas.front(), sigmas.back(), steps);
      ts.clear();
      for (double s : k) ts.push_back(static_cast<int64_t>(np_round(sigma_to_t(s, log_sigmas))));
      std::reverse(ts.begin(), ts.end());
    }

    // Drop duplicates, keeping the first occurrence of each value in order.
    std::vector<double> unique;
    std::set<int64_t> seen;
    for (int64_t t : ts)
      if (seen.insert(t).second) unique.push_back(static_cast<double>(t));
    check_timestep_range(unique, steps, spacing_, steps_offset_);
    timesteps_ = std::move(unique);
    num_inference_steps_ = steps;
    history_.assign(static_cast<size_t>(order_), at::Tensor());
    lower_order_nums_ = 0;
  }

  bool needs_noise() const override { return sde_; }

  at::Tensor step(const at::Tensor& model_output, size_t step_index, const at::Tensor& sample,
                  const at::Tensor& noise) override {
    const auto t = static_cast<int64_t>(timestep_at(step_index, "step"));
    const size_t n = timesteps_.size();
    const int64_t prev_t = step_index == n - 1 ? 0 : static_cast<int64_t>(timesteps_[step_index + 1]);
    const bool lower_final = step_index == n - 1 && lower_order_final_ && n < 15;
    const bool lower_second = step_index == n - 2 && lower_order_final_ && n < 15;

    const at::Tensor converted = convert_model_output(model_output, t, sample);
    for (size_t i = 0; i + 1 < history_.size(); ++i) history_[i] = history_[i + 1];
    history_.back() = converted;
    // Upstream draws the SDE noise once per step, whichever order the step takes.
    const at::Tensor z = sde_ ? step_noise(noise, converted) : at::Tensor();

    at::Tensor prev;
    if (order_ == 1 || lower_order_nums_ < 1 || lower_final) {
      prev = first_order(converted, t, prev_t, sample, z);
    } else if (order_ == 2 || lower_order_nums_ < 2 || lower_second) {
      const auto s1 = static_cast<int64_t>(timesteps_.at(step_index - 1));
      prev = second_order(t, s1, prev_t, sample, z);
    } else {
      const auto s1 = static_cast<int64_t>(timesteps_.at(step_index - 1));
      const auto s2 = static_cast<int64_t>(timesteps_.at(step_index - 2));
      prev = third_order(t, s1, s2, prev_t, sample);
    }
    if (lower_order_nums_ < order_) ++lower_order_nums_;
    return prev;
  }

 private:
  float alpha(int64_t t) const { return alpha_.at(static_cast<size_t>(t)); }
  float sigma(int64_t t) const { return sigma_.at(static_cast<size_t>(t)); }
  float lambda(int64_t t) const { return lambda_.at(static_cast<size_t>(t)); }

  at::Tensor convert_model_output(const at::Tensor& model_output, int64_t t, const at::Tensor& sample) const {
    const double a = alpha(t), s = sigma(t);
    if (algorithm_ != "dpmsolver") {  // the ++ solvers, ODE and SDE, integrate the data prediction
      if (prediction_type_ == "epsilon") return (sample - model_output * s) / a;
      if (prediction_type_ == "sample") return model_output;
      return sample * a - model_output * s;  // v_prediction
    }
    if (prediction_type_ == "epsilon") return model_output;
    if (prediction_type_ == "sample") return (sample - model_output * a) / s;
    return model_output * a + sample * s;  // v_prediction
  }

  // The SDE's noise term σ_t·√(1 − e^{−2h})·z.
  at::Tensor sde_noise(const at::Tensor& z, int64_t t, float h) const {
    return z * static_cast<double>(sigma(t) * std::sqrt(1.0f - std::exp(-2.0f * h)));
  }

  at::Tensor first_order(const at::Tensor& m, int64_t s0, int64_t t, const at::Tensor& sample,
                         const at::Tensor& z) const {
    const float h = lambda(t) - lambda(s0);
    if (sde_) {
      const float c_x = sigma(t) / sigma(s0) * std::exp(-h);
      const float c_m = alpha(t) * (1.0f - std::exp(-2.0f * h));
      return sample * static_cast<double>(c_x) + m * static_cast<double>(c_m) + sde_noise(z, t, h);
    }
    if (algorithm_ == "dpmsolver++") {
      const float c_x = sigma(t) / sigma(s0);
      const float c_m = alpha(t) * (std::exp(-h) - 1.0f);
      return sample * static_cast<double>(c_x) - m * static_cast<double>(c_m);
    }
    const float c_x = alpha(t) / alpha(s0);
    const float c_m = sigma(t) * (std::exp(h) - 1.0f);
    return sample * static_cast<double>(c_x) - m * static_cast<double>(c_m);
  }

  at::Tensor second_order(int64_t s0, int64_t s1, int64_t t, const at::Tensor& sample, const at::Tensor& z) const {
    const at::Tensor& m0 = history_[history_.size() - 1];
    const at::Tensor& m1 = history_[history_.size() - 2];
    const float h = lambda(t) - lambda(s0), h0 = lambda(s0) - lambda(s1);
    const float r0 = h0 / h;
    const at::Tensor& d0 = m0;
    const at::Tensor d1 = (m0 - m1) * static_cast<double>(1.0f / r0);
    if (sde_) {
      const float c_x = sigma(t) / sigma(s0) * std::exp(-h);
      const float c0 = alpha(t) * (1.0f - std::exp(-2.0f * h));
      const float c1 = solver_type_ == "midpoint" ? 0.5f * c0
                                                  : alpha(t) * ((1.0f - std::exp(-2.0f * h)) / (-2.0f * h) + 1.0f);
      return sample * static_cast<double>(c_x) + d0 * static_cast<double>(c0) + d1 * static_cast<double>(c1) +
             sde_noise(z, t, h);
    }
    if (algorithm_ == "dpmsolver++") {
      const float c_x = sigma(t) / sigma(s0);
      const float c0 = alpha(t) * (std::exp(-h) - 1.0f);
      if (solver_type_ == "midpoint")
        return sample * static_cast<double>(c_x) - d0 * static_cast<double>(c0) -
               d1 * static_cast<double>(0.5f * c0);
      const float c1 = alpha(t) * ((std::exp(-h) - 1.0f) / h + 1.0f);
      return sample * static_cast<double>(c_x) - d0 * static_cast<double>(c0) + d1 * static_cast<double>(c1);
    }
    const float c_x = alpha(t) / alpha(s0);
    const float c0 = sigma(t) * (std::exp(h) - 1.0f);
    if (solver_type_ == "midpoint")
      return sample * static_cast<double>(c_x) - d0 * static_cast<double>(c0) - d1 * static_cast<double>(0.5f * c0);
    const float c1 = sigma(t) * ((std::exp(h) - 1.0f) / h - 1.0f);
    return sample * static_cast<double>(c_x) - d0 * static_cast<double>(c0) - d1 * static_cast<double>(c1);
  }

  at::Tensor third_order(int64_t s0, int64_t s1, int64_t s2, int64_t t, const at::Tensor& sample) const {
    const at::Tensor& m0 = history_[history_.size() - 1];
    const at::Tensor& m1 = history_[history_.size() - 2];
    const at::Tensor& m2 = history_[history_.size() - 3];
    const float h = lambda(t) - lambda(s0), h0 = lambda(s0) - lambda(s1), h1 = lambda(s1) - lambda(s2);
    const float r0 = h0 / h, r1 = h1 / h;
    const at::Tensor& d0 = m0;
    const at::Tensor d1_0 = (m0 - m1) * static_cast<double>(1.0f / r0);
    const at::Tensor d1_1 = (m1 - m2) * static_cast<double>(1.0f / r1);
    const at::Tensor d1 = d1_0 + (d1_0 - d1_1) * static_cast<double>(r0 / (r0 + r1));
    const at::Tensor d2 = (d1_0 - d1_1) * static_cast<double>(1.0f / (r0 + r1));
    if (algorithm_ == "dpmsolver++") {
      const float e = std::exp(-h);
      const float c_x = sigma(t) / sigma(s0);
      const float c0 = alpha(t) * (e - 1.0f);
      const float c1 = alpha(t) * ((e - 1.0f) / h + 1.0f);
      const float c2 = alpha(t) * ((e - 1.0f + h) / (h * h) - 0.5f);
      return sample * static_cast<double>(c_x) - d0 * static_cast<double>(c0) + d1 * static_cast<double>(c1) -
             d2 * static_cast<double>(c2);
    }
    const float e = std::exp(h);
    const float c_x = alpha(t) / alpha(s0);
    const float c0 = sigma(t) * (e - 1.0f);
    const float c1 = sigma(t) * ((e - 1.0f) / h - 1.0f);
    const float c2 = sigma(t) * ((e - 1.0f - h) / (h * h) - 0.5f);
    return sample * static_cast<double>(c_x) - d0 * static_cast<double>(c0) - d1 * static_cast<double>(c1) -
           d2 * static_cast<double>(c2);
  }

  std::string spacing_, algorithm_, solver_type_;
  int64_t steps_offset_ = 0, order_ = 2;
  bool lower_order_final_ = true, karras_ = false, sde_ = false;
  double lambda_min_clipped_ = 0;
  std::vector<float> alpha_, sigma_, lambda_;
  std::vector<at::Tensor> history_;  // converted model outputs, oldest first
  int64_t lower_order_nums_ = 0;
};

}  // namespace

std::unique_ptr<Scheduler> make_dpm_solver(const std::string& kind, const io::Json& file, const io::Json& forced) {
  return std::make_unique<DPMSolver>(kind, file, forced);
}

}  // namespace kosmosg::diffusion::detail
