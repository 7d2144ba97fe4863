// PNDMScheduler (diffusers v0.21.4): pseudo Runge-Kutta warm-up steps followed by linear
// multistep (PLMS), or PLMS only with skip_prk_steps (Stable Diffusion's setting).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "diffusion/internal.h"
#include "kosmosg/error.h"

namespace kosmosg::diffusion::detail {
namespace {

const char* const kPndmClass = "PNDMScheduler";

io::Json pndm_defaults() {
  auto d = common_defaults();
  d["skip_prk_steps"] = false;
  d["set_alpha_to_one"] = false;
  d["prediction_type"] = "epsilon";
  d["timestep_spacing"] = "leading";
  d["steps_offset"] = 0;
  return d;
}

class PNDM final : public Scheduler {
 public:
  PNDM(const std::string& kind, const io::Json& file)
      : Scheduler(kind, kPndmClass, merge_config(pndm_defaults(), file, kPndmClass)) {
    schedule_ = schedule_from_config(config_, kPndmClass);
    prediction_type_ = prediction_type_of(config_, {"epsilon", "v_prediction"}, kPndmClass);
    spacing_ = spacing_of(config_, kPndmClass);
    steps_offset_ = io::config_require<int64_t>(config_, "steps_offset", kPndmClass);
    skip_prk_ = io::config_require<bool>(config_, "skip_prk_steps", kPndmClass);
    final_alpha_cumprod_ = io::config_require<bool>(config_, "set_alpha_to_one", kPndmClass) ? 1.0f : schedule_.acp[0];
  }

  void set_timesteps(int64_t steps) override {
    check_steps(steps);
    const int64_t n_train = schedule_.num_train_timesteps;
    std::vector<int64_t> base;  // ascending
    if (spacing_ == "linspace") {
      for (double v : np_linspace(0, static_cast<double>(n_train - 1), steps))
        base.push_back(static_cast<int64_t>(np_round(v)));
    } else if (spacing_ == "leading") {
      const int64_t ratio = n_train / steps;
      for (int64_t i = 0; i < steps; ++i) base.push_back(i * ratio + steps_offset_);
    } else {  // trailing
      const double ratio = static_cast<double>(n_train) / static_cast<double>(steps);
      for (double v : np_arange(static_cast<double>(n_train), 0, -ratio))
        base.push_back(static_cast<int64_t>(np_round(v)));
      std::reverse(base.begin(), base.end());
      for (auto& t : base) t -= 1;
    }

    std::vector<int64_t> prk, plms;
    const size_t nb = base.size();
    if (skip_prk_) {
      // base[:-1] + base[-2:-1] + base[-1:], reversed.
      plms.assign(base.begin(), base.end() - 1);
      if (nb >= 2) plms.push_back(base[nb - 2]);
      plms.push_back(base[nb - 1]);
      std::reverse(plms.begin(), plms.end());
    } else {
      if (nb < 4)
        fail_here("with skip_prk_steps false PNDM needs at least 4 inference steps (got " +
                  std::to_string(steps) + ")");
      const int64_t half = n_train / steps / 2;
      std::vector<int64_t> pairs;  // base[-4:].repeat(2) + tile([0, half], 4)
      for (size_t i = nb - 4; i < nb; ++i) {
        pairs.push_back(base[i]);
        pairs.push_back(base[i] + half);
      }
      std::vector<int64_t> doubled;  // pairs[:-1].repeat(2)[1:-1]
      for (size_t i = 0; i + 1 < pairs.size(); ++i) doubled.insert(doubled.end(), 2, pairs[i]);
      prk.assign(doubled.begin() + 1, doubled.end() - 1);
      std::reverse(prk.begin(), prk.end());
      plms.assign(base.begin(), base.end() - 3);
      std::reverse(plms.begin(), plms.end());
    }
    prk_ = prk;
    std::vector<double> ts;
    for (int64_t t : prk) ts.push_back(static_cast<double>(t));
    for (int64_t t : plms) ts.push_back(static_cast<double>(t));
    check_timestep_range(ts, steps, spacing_, steps_offset_);
    timesteps_ = std::move(ts);
    num_inference_steps_ = steps;
    ets_.clear();
    counter_ = 0;
    cur_model_output_ = at::Tensor();
    cur_sample_ = at::Tensor();
  }

  at::Tensor step(const at::Tensor& model_output, size_t step_index, const at::Tensor& sample,
                  const at::Tensor& /*noise*/) override {
    const auto t = static_cast<int64_t>(timestep_at(step_index, "step"));
    if (counter_ < static_cast<int64_t>(prk_.size()) && !skip_prk_) return step_prk(model_output, t, sample);
    return step_plms(model_output, t, sample);
  }

 private:
  at::Tensor step_prk(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) {
    const int64_t n_train = schedule_.num_train_timesteps;
    const int64_t diff_to_prev = counter_ % 2 ? 0 : n_train / num_inference_steps_ / 2;
    const int64_t prev_t = timestep - diff_to_prev;
    const int64_t t = prk_[static_cast<size_t>(counter_ / 4 * 4)];
    at::Tensor e = model_output;
    auto accumulate = [&](double w) {
      cur_model_output_ = cur_model_output_.defined() ? cur_model_output_ + model_output * w : model_output * w;
    };
    if (counter_ % 4 == 0) {
      accumulate(1.0 / 6);
      ets_.push_back(model_output);
      cur_sample_ = sample;
    } else if ((counter_ - 1) % 4 == 0 || (counter_ - 2) % 4 == 0) {
      accumulate(1.0 / 3);
    } else {
      e = cur_model_output_.defined() ? cur_model_output_ + model_output * (1.0 / 6) : model_output * (1.0 / 6);
      cur_model_output_ = at::Tensor();
    }
    const at::Tensor& x = cur_sample_.defined() ? cur_sample_ : sample;
    at::Tensor prev = prev_sample(x, t, prev_t, e);
    ++counter_;
    return prev;
  }

  at::Tensor step_plms(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample_in) {
    if (!skip_prk_ && ets_.size() < 3)
      fail_here("the PLMS steps can only run after at least 12 Runge-Kutta steps");
    const int64_t ratio = schedule_.num_train_timesteps / num_inference_steps_;
    int64_t t = timestep, prev_t = timestep - ratio;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output);
    } else {
      prev_t = timestep;
      t = timestep + ratio;
    }
    at::Tensor e, sample = sample_in;
    const size_t k = ets_.size();
    if (k == 1 && counter_ == 0) {
      e = model_output;
      cur_sample_ = sample;
    } else if (k == 1 && counter_ == 1) {
      e = (model_output + ets_.back()) / 2;
      if (!cur_sample_.defined()) fail_here("PNDM lost its saved sample (steps called out of order?)");
      sample = cur_sample_;
      cur_sample_ = at::Tensor();
    } else if (k == 2) {
      e = (ets_[1] * 3 - ets_[0]) / 2;
    } else if (k == 3) {
      e = (ets_[2] * 23 - ets_[1] * 16 + ets_[0] * 5) / 12;
    } else {
      e = (ets_[k - 1] * 55 - ets_[k - 2] * 59 + ets_[k - 3] * 37 - ets_[k - 4] * 9) * (1.0 / 24);
    }
    at::Tensor prev = prev_sample(sample, t, prev_t, e);
    ++counter_;
    return prev;
  }

  // Formula (9) of the PNDM paper, as diffusers writes it.
  at::Tensor prev_sample(const at::Tensor& sample, int64_t t, int64_t prev_t, at::Tensor e) const {
    const float a = schedule_.alpha_cumprod(t);
    const float a_prev = prev_t >= 0 ? schedule_.alpha_cumprod(prev_t) : final_alpha_cumprod_;
    const float b = 1.0f - a, b_prev = 1.0f - a_prev;
    if (prediction_type_ == "v_prediction")
      e = e * static_cast<double>(std::sqrt(a)) + sample * static_cast<double>(std::sqrt(b));
    const float sample_coeff = std::sqrt(a_prev / a);
    const float denom = a * std::sqrt(b_prev) + std::sqrt(a * b * a_prev);
    return sample * static_cast<double>(sample_coeff) - e * static_cast<double>(a_prev - a) / static_cast<double>(denom);
  }

  std::string spacing_;
  int64_t steps_offset_ = 0;
  bool skip_prk_ = false;
  float final_alpha_cumprod_ = 1.0f;
  std::vector<int64_t> prk_;
  std::vector<at::Tensor> ets_;
  int64_t counter_ = 0;
  at::Tensor cur_model_output_, cur_sample_;
};

}  // namespace

std::unique_ptr<Scheduler> make_pndm(const std::string& kind, const io::Json& file) {
  return std::make_unique<PNDM>(kind, file);
}

}  // namespace kosmosg::diffusion::detail
