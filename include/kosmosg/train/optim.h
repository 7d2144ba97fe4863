#pragma once
// The official optimisation arithmetic (fairseq 1.0, reference §6.2): Adam with decoupled weight
// decay on every trainable tensor, the polynomial-decay learning rate with warm-up, clipping of
// the global gradient norm, and the fp16 dynamic loss scaler.
#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "kosmosg/io/config.h"
#include "kosmosg/io/safetensors.h"

namespace kosmosg::train {

// A trainable tensor under its official state-dict name.
using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;

struct AdamOptions {
  double beta1 = 0.9, beta2 = 0.98;
  double eps = 1e-6;
  double weight_decay = 0.01;
};

// fairseq.optim.adam.Adam (the non-fused kernel): float32 moments; p ← p − lr·wd·p, then
// p ← p − lr·√(1−β2^t)/(1−β1^t) · m/(√v + eps). A tensor whose gradient is undefined is skipped
// (its step count does not advance), as upstream.
class FairseqAdam {
 public:
  FairseqAdam(NamedParameters parameters, AdamOptions options);

  void step(double lr);
  const NamedParameters& parameters() const { return parameters_; }
  const AdamOptions& options() const { return options_; }

  // Moments and step counts as `exp_avg.<name>`, `exp_avg_sq.<name>`, `step.<name>` (CPU).
  io::TensorMap state() const;
  // Restores state(); every entry must match a parameter's name and shape.
  void load_state(const io::TensorMap& state);

 private:
  struct Slot {
    at::Tensor exp_avg, exp_avg_sq;
    int64_t step = 0;
  };
  NamedParameters parameters_;
  AdamOptions options_;
  std::vector<Slot> slots_;
};

// fairseq polynomial_decay: lr·n/warmup for n ≤ warmup, end_learning_rate for n ≥ total, else
// (lr − end)·(1 − (n − warmup)/(total − warmup))^power + end, where n counts the updates done.
struct PolynomialDecay {
  double lr = 1e-3;
  int64_t warmup_updates = 375;
  int64_t total_num_update = 200000;
  double end_learning_rate = 0;
  double power = 1;

  double at(int64_t num_updates) const;
  // The rate set when the scheduler is built, before the first step_update: lr/warmup.
  double initial() const;
};

// Scales every defined gradient by `coefficient`.
void multiply_grads(const NamedParameters& parameters, double coefficient);

// fairseq.utils.clip_grad_norm_: the L2 norm over every defined gradient (each tensor's norm in
// float32), returned before clipping; gradients are multiplied by min(1, max_norm/(norm + 1e-6))
// when max_norm > 0.
double clip_grad_norm(const NamedParameters& parameters, double max_norm);

// fairseq's DynamicLossScaler as FP16Optimizer uses it: an overflow (non-finite gradient norm)
// halves the scale and skips the update; 256 (scale_window) overflow-free updates in a row double
// it; a scale at or below min_loss_scale is an error.
class DynamicLossScaler {
 public:
  struct Options {
    double init_scale = 4;
    double scale_factor = 2;
    int64_t scale_window = 256;
    double min_loss_scale = 1e-4;
  };
  explicit DynamicLossScaler(Options options);
  DynamicLossScaler() : DynamicLossScaler(Options{}) {}

  double scale() const { return scale_; }
  // Records the gradient norm of this update; returns false (skip the update) on overflow.
  bool check(double grad_norm);
  io::Json state() const;
  void load_state(const io::Json& state);

 private:
  Options options_;
  double scale_;
  int64_t iter_ = 0, last_overflow_iter_ = -1;
};

}  // namespace kosmosg::train
