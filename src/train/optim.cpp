#include "kosmosg/train/optim.h"

#include <cmath>

#include "kosmosg/error.h"

namespace kosmosg::train {

FairseqAdam::FairseqAdam(NamedParameters parameters, AdamOptions options)
    : parameters_(std::move(parameters)), options_(options), slots_(parameters_.size()) {
  if (options.beta1 < 0 || options.beta1 >= 1 || options.beta2 < 0 || options.beta2 >= 1)
    fail("adam", "betas (" + c10::str(options.beta1) + ", " + c10::str(options.beta2) + ") must lie in [0, 1)");
  if (options.eps <= 0) fail("adam", "eps " + c10::str(options.eps) + " must be positive");
  if (options.weight_decay < 0) fail("adam", "weight decay " + c10::str(options.weight_decay) + " must be >= 0");
}

void FairseqAdam::step(double lr) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    at::Tensor p = parameters_[i].second;
    const at::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    Slot& s = slots_[i];
    // Moments and the update are float32 whatever the parameter's storage (memory-efficient fp16).
    const at::Tensor g = grad.to(at::kFloat);
    at::Tensor p32 = p.scalar_type() == at::kFloat ? p : p.to(at::kFloat);
    if (!s.exp_avg.defined()) {
      s.exp_avg = at::zeros_like(p32);
      s.exp_avg_sq = at::zeros_like(p32);
    }
    s.step += 1;
    s.exp_avg.mul_(options_.beta1).add_(g, 1 - options_.beta1);
    s.exp_avg_sq.mul_(options_.beta2).addcmul_(g, g, 1 - options_.beta2);
    const at::Tensor denom = s.exp_avg_sq.sqrt().add_(options_.eps);
    const double bias_correction1 = 1 - std::pow(options_.beta1, static_cast<double>(s.step));
    const double bias_correction2 = 1 - std::pow(options_.beta2, static_cast<double>(s.step));
    const double step_size = lr * std::sqrt(bias_correction2) / bias_correction1;
    if (options_.weight_decay != 0) p32.add_(p32, -options_.weight_decay * lr);
    p32.addcdiv_(s.exp_avg, denom, -step_size);
    if (!p32.is_same(p)) p.copy_(p32);
  }
}

io::TensorMap FairseqAdam::state() const {
  io::TensorMap out;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& name = parameters_[i].first;
    const Slot& s = slots_[i];
    out["step." + name] = at::full({1}, s.step, at::TensorOptions().dtype(at::kLong));
    if (!s.exp_avg.defined()) continue;
    out["exp_avg." + name] = s.exp_avg.cpu();
    out["exp_avg_sq." + name] = s.exp_avg_sq.cpu();
  }
  return out;
}

void FairseqAdam::load_state(const io::TensorMap& state) {
  std::vector<Slot> slots(parameters_.size());
  size_t used = 0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& [name, p] = parameters_[i];
    auto step = state.find("step." + name);
    if (step == state.end()) fail("adam", "the optimiser state has no entry for " + name);
    slots[i].step = step->second.item<int64_t>();
    ++used;
    auto m = state.find("exp_avg." + name), v = state.find("exp_avg_sq." + name);
    if ((m == state.end()) != (v == state.end()))
      fail("adam", "the optimiser state of " + name + " has only one of exp_avg and exp_avg_sq");
    if (m == state.end()) continue;
    for (const auto* entry : {&m->second, &v->second})
      if (entry->sizes() != p.sizes())
        fail("adam", "the optimiser state of " + name + " has shape " + c10::str(entry->sizes()) +
                         " but the parameter has " + c10::str(p.sizes()));
    slots[i].exp_avg = m->second.to(p.device(), at::kFloat).clone();
    slots[i].exp_avg_sq = v->second.to(p.device(), at::kFloat).clone();
    used += 2;
  }
  if (used != state.size())
    fail("adam", "the optimiser state has " + std::to_string(state.size() - used) +
                     " entries for parameters this stage does not train");
  slots_ = std::move(slots);
}

double PolynomialDecay::at(int64_t n) const {
  if (warmup_updates > 0 && n <= warmup_updates)
    return lr * static_cast<double>(n) / static_cast<double>(warmup_updates);
  if (n >= total_num_update) return end_learning_rate;
  const double remaining = 1.0 - static_cast<double>(n - warmup_updates) /
                                     static_cast<double>(total_num_update - warmup_updates);
  return (lr - end_learning_rate) * std::pow(remaining, power) + end_learning_rate;
}

double PolynomialDecay::initial() const {
  return warmup_updates > 0 ? lr / static_cast<double>(warmup_updates) : lr;
}

void multiply_grads(const NamedParameters& parameters, double coefficient) {
  at::NoGradGuard no_grad;
  for (const auto& [name, p] : parameters)
    if (p.grad().defined()) p.mutable_grad().mul_(coefficient);
}

double clip_grad_norm(const NamedParameters& parameters, double max_norm) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const auto& [name, p] : parameters)
    if (p.grad().defined()) norms.push_back(p.grad().to(at::kFloat).norm());
  if (norms.empty()) return 0;
  const double total = norms.size() == 1 ? norms[0].item<double>() : at::stack(norms).norm().item<double>();
  if (max_norm > 0 && std::isfinite(total)) {
    const double coefficient = std::min(1.0, max_norm / (total + 1e-6));
    multiply_grads(parameters, coefficient);
  }
  return total;
}

DynamicLossScaler::DynamicLossScaler(Options options) : options_(options), scale_(options.init_scale) {
  if (options.init_scale <= 0 || options.scale_factor <= 1 || options.scale_window < 1)
    fail("loss scaler", "needs init_scale > 0, scale_factor > 1 and scale_window >= 1");
}

bool DynamicLossScaler::check(double grad_norm) {
  if (!std::isfinite(grad_norm)) {
    const double previous = scale_;
    last_overflow_iter_ = iter_;
    scale_ /= options_.scale_factor;
    if (scale_ <= options_.min_loss_scale) {
      scale_ = previous;
      fail("loss scaler", "the fp16 loss scale fell to " + c10::str(previous / options_.scale_factor) +
                              " (minimum " + c10::str(options_.min_loss_scale) +
                              "): the loss or the gradients keep overflowing; lower the learning rate, "
                              "check the data, or train in bfloat16/float32");
    }
    ++iter_;
    return false;
  }
  if ((iter_ - last_overflow_iter_) % options_.scale_window == 0) scale_ *= options_.scale_factor;
  ++iter_;
  return true;
}

io::Json DynamicLossScaler::state() const {
  return {{"scale", scale_}, {"iter", iter_}, {"last_overflow_iter", last_overflow_iter_}};
}

void DynamicLossScaler::load_state(const io::Json& state) {
  scale_ = io::config_require<double>(state, "scale", "loss scaler state");
  iter_ = io::config_require<int64_t>(state, "iter", "loss scaler state");
  last_overflow_iter_ = io::config_require<int64_t>(state, "last_overflow_iter", "loss scaler state");
}

}  // namespace kosmosg::train
