#include "kosmosg/train/trainer.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>

#include "kosmosg/error.h"
#include "kosmosg/nn/autocast.h"

namespace kosmosg::train {

PrecisionPolicy PrecisionPolicy::parse(const std::string& name, c10::DeviceType device) {
  PrecisionPolicy p;
  p.device = device;
  if (name == "float32") return p;
  if (name == "memory-efficient-bf16" || name == "memory-efficient-fp16") {
    p = parse(name == "memory-efficient-bf16" ? "bfloat16" : "float16", device);
    p.memory_efficient = true;
    return p;
  }
  if (name == "bfloat16") {
#if TORCH_VERSION_MAJOR < 2
    // LibTorch 1.x's CPU autocast leaves LayerNorm and GroupNorm out of its float32 list, and those
    // kernels refuse bfloat16 activations with float32 weights.
    if (device == c10::DeviceType::CPU)
      fail("precision", "bfloat16 on the CPU needs LibTorch 2.x (this build has " + std::string(TORCH_VERSION) +
                            ", whose CPU autocast cannot run LayerNorm on bfloat16 activations); use float32 here");
#endif
    p.compute = at::kBFloat16;
    return p;
  }
  if (name == "float16") {
    if (device != c10::DeviceType::CUDA)
      fail("precision", "float16 computes on CUDA only; on the CPU use bfloat16 or float32");
    p.compute = at::kHalf;
    return p;
  }
  fail("precision", "'" + name +
                        "' is not a precision (float32, bfloat16, float16, memory-efficient-bf16 or memory-efficient-fp16)");
}

void PrecisionPolicy::store(Stage& stage) const {
  if (memory_efficient) stage.model().to(compute);
}

Trainer::Trainer(Stage& stage, OptimizationOptions options, std::shared_ptr<ProcessGroup> group,
                 int64_t bucket_bytes)
    : stage_(stage),
      options_(options),
      optimizer_(stage.trainable(), options.adam),
      scaler_(options.scaler),
      group_(std::move(group)) {
  if (stage.trainable().empty()) fail("train", "the stage has no trainable parameter");
  if (group_) reducer_ = std::make_unique<GradientReducer>(group_, stage.trainable(), bucket_bytes);
}

Trainer::~Trainer() = default;

UpdateResult Trainer::update(const std::vector<std::function<StageLoss()>>& micro_batches,
                             const std::vector<double>& rank_values) {
  if (micro_batches.empty()) fail("train", "an update needs at least one micro-batch");
  const NamedParameters& params = stage_.trainable();
  for (const auto& [name, p] : params)
    if (p.grad().defined()) p.mutable_grad().zero_();
  stage_.train_mode();

  UpdateResult r;
  r.rank_sums = rank_values;
  r.loss_scale = options_.loss_scaling ? scaler_.scale() : 1.0;
  double loss_sum = 0;
  for (size_t i = 0; i < micro_batches.size(); ++i) {
    const auto& forward = micro_batches[i];
    if (reducer_) reducer_->begin(i + 1 == micro_batches.size());
    StageLoss out;
    {
      nn::AutocastGuard autocast(options_.precision.device, options_.precision.compute);
      out = forward();
    }
    out.loss = out.loss.to(at::kFloat);
    loss_sum += out.loss.item<double>();
    r.sample_size += out.sample_size;
    r.samples += out.samples;
    for (const auto& [key, value] : out.logs) r.logs[key] += value / static_cast<double>(micro_batches.size());
    (r.loss_scale == 1.0 ? out.loss : out.loss * r.loss_scale).backward();
  }
  if (group_) {
    reducer_->finish();
    r.communication_wait_s = reducer_->last_wait_seconds();
    // One all-reduce for the scalars: every rank's stage logs the same keys.
    std::vector<double> sums{loss_sum, static_cast<double>(r.sample_size), static_cast<double>(r.samples)};
    for (const auto& [key, value] : r.logs) sums.push_back(value);
    sums.insert(sums.end(), rank_values.begin(), rank_values.end());
    group_->all_reduce_sum(sums);
    loss_sum = sums[0];
    r.sample_size = static_cast<int64_t>(std::llround(sums[1]));
    r.samples = static_cast<int64_t>(std::llround(sums[2]));
    size_t k = 3;
    for (auto& [key, value] : r.logs) value = sums[k++] / static_cast<double>(group_->world_size());
    for (auto& value : r.rank_sums) value = sums[k++];
  }
  r.loss = loss_sum / static_cast<double>(std::max<int64_t>(r.sample_size, 1));

  {
    torch::NoGradGuard no_grad;
    // fairseq's legacy DDP gives every trainable tensor a gradient, zeros where backward missed it,
    // so weight decay still moves such tensors (the golden instruct case relies on it).
    for (const auto& [name, p] : params)
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
  }
  const double unscale = 1.0 / (static_cast<double>(std::max<int64_t>(r.sample_size, 1)) * r.loss_scale);
  // Half-precision gradients (memory-efficient mode) stay scaled until one multiplication just
  // before Adam, as fairseq's MemoryEfficientFP16Optimizer defers its multiply factor: unscaling
  // and clipping them one after the other in half precision would underflow twice.
  double deferred = 1;
  if (options_.precision.memory_efficient) {
    r.grad_norm = unscale * clip_grad_norm(params, 0);
    deferred = unscale;
    if (std::isfinite(r.grad_norm) && options_.clip_norm > 0)
      deferred *= options_.loss_scaling ? (r.grad_norm > options_.clip_norm ? options_.clip_norm / r.grad_norm : 1.0)
                                        : std::min(1.0, options_.clip_norm / (r.grad_norm + 1e-6));
  } else {
    multiply_grads(params, unscale);
    r.grad_norm = clip_grad_norm(params, options_.clip_norm);
  }
  r.lr = options_.schedule.at(num_updates_);
  if (options_.loss_scaling) {
    r.applied = scaler_.check(r.grad_norm);
  } else if (!std::isfinite(r.grad_norm)) {
    fail("train", "the gradient norm is " + c10::str(r.grad_norm) + " at update " + std::to_string(num_updates_ + 1) +
                      " (loss " + c10::str(r.loss) + "): the loss diverged; lower the learning rate or check the data");
  }
  if (r.applied) {
    if (deferred != 1) multiply_grads(params, deferred);
    optimizer_.step(r.lr);
    ++num_updates_;
  }
  for (const auto& [name, p] : params) p.mutable_grad() = at::Tensor();
  return r;
}

io::Json Trainer::state() const {
  return {{"num_updates", num_updates_}, {"loss_scaler", scaler_.state()}};
}

void Trainer::load_state(const io::Json& state) {
  num_updates_ = io::config_require<int64_t>(state, "num_updates", "trainer state");
  if (state.contains("loss_scaler")) scaler_.load_state(state.at("loss_scaler"));
}

}  // namespace kosmosg::train
