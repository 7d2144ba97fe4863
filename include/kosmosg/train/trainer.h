#pragma once
// One optimiser update in the order of fairseq's Trainer.train_step (reference §6.2, golden
// README "The update"): forward and backward of every micro-batch, zero gradients for trainable
// tensors the backward missed, division by the summed sample size (and the loss scale), clipping
// of the global norm, the fp16 overflow check, then Adam with the rate of the updates done so far.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include "kosmosg/io/config.h"
#include "kosmosg/train/distributed.h"
#include "kosmosg/train/optim.h"
#include "kosmosg/train/stage.h"

namespace kosmosg::train {

// The precision policy: trainable weights stay float32 masters (Adam runs in float32); the forward
// runs under autocast in `compute` on `device`: bfloat16 on the CPU or CUDA, float16 on CUDA (with
// the dynamic loss scaler).
struct PrecisionPolicy {
  c10::DeviceType device = c10::DeviceType::CPU;
  c10::ScalarType compute = c10::kFloat;
  // fairseq's --memory-efficient-fp16/-bf16 (the official runs): every weight, the trainable ones
  // included, is stored in `compute`; Adam keeps float32 moments and computes each update in
  // float32, then writes it back.
  bool memory_efficient = false;
  // "float32", "bfloat16", "float16", "memory-efficient-bf16" or "memory-efficient-fp16"; an Error
  // for float16 on the CPU and for other names.
  static PrecisionPolicy parse(const std::string& name, c10::DeviceType device);
  // Stores the stage's weights as the policy says (call before building its Trainer).
  void store(Stage& stage) const;
};

struct OptimizationOptions {
  AdamOptions adam;
  PolynomialDecay schedule;
  double clip_norm = 2.0;
  PrecisionPolicy precision;
  bool loss_scaling = false;  // fp16 compute: dynamic loss scaling
  DynamicLossScaler::Options scaler;
};

// What one update did.
struct UpdateResult {
  bool applied = true;      // false: skipped on an fp16 overflow
  double loss = 0;          // Σ losses / Σ sample sizes
  double grad_norm = 0;     // before clipping
  double lr = 0;            // the rate this update used
  double loss_scale = 1;
  int64_t sample_size = 0;  // summed over micro-batches and ranks
  int64_t samples = 0;      // rows trained on, over micro-batches and ranks
  double communication_wait_s = 0;  // all-reduce time the backward pass did not hide
  std::map<std::string, double> logs;  // the stages' parts, averaged over micro-batches and ranks
  std::vector<double> rank_sums;       // the rank_values given to update(), summed over the ranks
};

class Trainer {
 public:
  // With a process group, gradients (in buckets of `bucket_bytes`), sample sizes and logs are
  // summed over its ranks (reference §6.6): every rank then applies the same update.
  Trainer(Stage& stage, OptimizationOptions options, std::shared_ptr<ProcessGroup> group = nullptr,
          int64_t bucket_bytes = DistributedOptions().bucket_bytes);
  ~Trainer();

  // One update from the forwards of its micro-batches (gradient accumulation: several); only
  // the last micro-batch's backward communicates. `rank_values` (e.g. the loader's counts) come
  // back in UpdateResult::rank_sums summed over the ranks, in the update's own all-reduce.
  UpdateResult update(const std::vector<std::function<StageLoss()>>& micro_batches,
                      const std::vector<double>& rank_values = {});

  // Updates applied so far (fairseq's num_updates; skipped updates do not count).
  int64_t num_updates() const { return num_updates_; }
  Stage& stage() { return stage_; }
  FairseqAdam& optimizer() { return optimizer_; }
  const OptimizationOptions& options() const { return options_; }

  // num_updates and the loss scaler (the optimiser's tensors are saved apart).
  io::Json state() const;
  void load_state(const io::Json& state);

 private:
  Stage& stage_;
  OptimizationOptions options_;
  FairseqAdam optimizer_;
  DynamicLossScaler scaler_;
  std::shared_ptr<ProcessGroup> group_;
  std::unique_ptr<GradientReducer> reducer_;
  int64_t num_updates_ = 0;
};

}  // namespace kosmosg::train
