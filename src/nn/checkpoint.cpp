#include "kosmosg/nn/checkpoint.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/version.h>

#include <mutex>
#include <set>
#include <utility>

#include "kosmosg/error.h"
#include "kosmosg/nn/autocast.h"

#define KOSMOSG_TORCH_HAS_DEVICE_AUTOCAST_API \
  (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4))

namespace kosmosg::nn {

AutocastState AutocastState::current() {
#if KOSMOSG_TORCH_HAS_DEVICE_AUTOCAST_API
  return {at::autocast::is_autocast_enabled(at::kCPU), at::autocast::is_autocast_enabled(at::kCUDA),
          at::autocast::get_autocast_dtype(at::kCPU), at::autocast::get_autocast_dtype(at::kCUDA)};
#else
  return {at::autocast::is_cpu_enabled(), at::autocast::is_enabled(), at::autocast::get_autocast_cpu_dtype(),
          at::autocast::get_autocast_gpu_dtype()};
#endif
}

void AutocastState::apply() const {
#if KOSMOSG_TORCH_HAS_DEVICE_AUTOCAST_API
  at::autocast::set_autocast_enabled(at::kCPU, cpu);
  at::autocast::set_autocast_enabled(at::kCUDA, cuda);
  at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
  at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
#else
  at::autocast::set_cpu_enabled(cpu);
  at::autocast::set_enabled(cuda);
  at::autocast::set_autocast_cpu_dtype(cpu_dtype);
  at::autocast::set_autocast_gpu_dtype(cuda_dtype);
#endif
}

AutocastGuard::AutocastGuard(c10::DeviceType device, c10::ScalarType dtype) : previous_(AutocastState::current()) {
  AutocastState next = previous_;
  const bool on = dtype != at::kFloat;
  if (device == c10::DeviceType::CUDA) {
    next.cuda = on;
    next.cuda_dtype = on ? dtype : next.cuda_dtype;
  } else {
    if (on && dtype != at::kBFloat16)
      fail("autocast", std::string("CPU autocast computes in bfloat16, not ") + c10::toString(dtype));
    next.cpu = on;
    next.cpu_dtype = on ? dtype : next.cpu_dtype;
  }
  next.apply();
}

AutocastGuard::~AutocastGuard() {
  previous_.apply();
  at::autocast::clear_cache();
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The states of the default generators a block may draw from: the CPU one and those of the
// CUDA devices its tensors live on.
struct RngState {
  std::vector<std::pair<at::Device, at::Tensor>> states;

  static RngState capture(const std::vector<at::Tensor>& tensors) {
    std::set<c10::DeviceIndex> cuda;
    for (const auto& t : tensors)
      if (t.defined() && t.is_cuda()) cuda.insert(t.device().index());
    RngState s;
    s.states.emplace_back(at::Device(at::kCPU), state_of(at::Device(at::kCPU)));
    for (auto index : cuda) {
      const at::Device device(at::kCUDA, index);
      s.states.emplace_back(device, state_of(device));
    }
    return s;
  }

  void restore() const {
    for (const auto& [device, state] : states) {
      at::Generator gen = at::globalContext().defaultGenerator(device);
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(state);
    }
  }

 private:
  static at::Tensor state_of(const at::Device& device) {
    at::Generator gen = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
  }
};

// Autocast settings are thread-local and the backward pass may run on another thread (or outside
// the autocast region).
// Sets the forward's RNG and autocast state for the recomputation and puts the current state
// back afterwards, so that the backward pass does not disturb the random stream of the run.
class ReplayGuard {
 public:
  ReplayGuard(const RngState& forward_rng, const AutocastState& forward_autocast,
              const std::vector<at::Tensor>& tensors)
      : rng_(RngState::capture(tensors)), autocast_(AutocastState::current()) {
    forward_rng.restore();
    forward_autocast.apply();
  }
  ~ReplayGuard() {
    rng_.restore();
    autocast_.apply();
  }
  ReplayGuard(const ReplayGuard&) = delete;
  ReplayGuard& operator=(const ReplayGuard&) = delete;

 private:
  RngState rng_;
  AutocastState autocast_;
};

// What the backward pass needs besides the saved tensors. Held in the context's saved_data as
// a capsule, the one IValue that carries an arbitrary C++ object.
struct Recompute : torch::CustomClassHolder {
  CheckpointFn fn;
  size_t input_count = 0;     // fn's inputs, undefined ones included
  std::vector<size_t> slots;  // where each defined input goes among them
  RngState rng;
  AutocastState autocast;

  // fn's argument list from the defined inputs (the first slots.size() of `tensors`).
  std::vector<at::Tensor> arguments(const std::vector<at::Tensor>& tensors) const {
    std::vector<at::Tensor> args(input_count);
    for (size_t i = 0; i < slots.size(); ++i) args[slots[i]] = tensors[i];
    return args;
  }
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // `tensors`: the defined inputs, then the parameters.
  static variable_list forward(AutogradContext* ctx, at::TensorList tensors,
                               const c10::intrusive_ptr<Recompute>& state) {
    const auto all = tensors.vec();
    state->rng = RngState::capture(all);
    state->autocast = AutocastState::current();
    const auto args = state->arguments(all);
    auto outputs = state->fn(args);
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (!outputs[i].defined())
        fail("checkpoint", "output " + std::to_string(i) + " of the checkpointed block is undefined");
      // An output that shares memory with an input or an earlier output would get two autograd
      // histories; a copy gets its own.
      bool aliased = false;
      for (const auto& a : args) aliased = aliased || (a.defined() && outputs[i].is_alias_of(a));
      for (size_t j = 0; j < i; ++j) aliased = aliased || outputs[i].is_alias_of(outputs[j]);
      if (aliased) outputs[i] = outputs[i].clone();
    }
    ctx->save_for_backward(all);
    ctx->saved_data["state"] = at::IValue::make_capsule(state);
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto state =
        c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["state"].toCapsule());
    const auto saved = ctx->get_saved_variables();
    const size_t defined_inputs = state->slots.size();

    // Inputs enter the recomputation as fresh leaves, so that the gradient stops at them;
    // parameters enter as themselves (the block reads them from its modules).
    std::vector<at::Tensor> leaves(saved.size());
    variable_list targets;
    std::vector<size_t> target_index;
    for (size_t i = 0; i < saved.size(); ++i) {
      leaves[i] = i < defined_inputs ? saved[i].detach() : saved[i];
      if (!ctx->needs_input_grad(i)) continue;
      if (i < defined_inputs) leaves[i].requires_grad_(true);
      targets.push_back(leaves[i]);
      target_index.push_back(i);
    }

    variable_list outputs;
    {
      ReplayGuard replay(state->rng, state->autocast, saved);
      at::AutoGradMode grad_mode(true);
      outputs = state->fn(state->arguments(leaves));
    }
    variable_list roots, root_grads;
    for (size_t i = 0; i < outputs.size() && i < grad_outputs.size(); ++i) {
      if (!outputs[i].requires_grad() || !grad_outputs[i].defined()) continue;
      roots.push_back(outputs[i]);
      root_grads.push_back(grad_outputs[i]);
    }

    // One gradient per tensor argument, then none for the state argument.
    variable_list grads(saved.size() + 1);
    if (roots.empty() || targets.empty()) return grads;
    const auto computed = torch::autograd::grad(roots, targets, root_grads, /*retain_graph=*/false,
                                                /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t k = 0; k < computed.size(); ++k) grads[target_index[k]] = computed[k];
    return grads;
  }
};

bool any_requires_grad(const std::vector<at::Tensor>& tensors) {
  for (const auto& t : tensors)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

}  // namespace

std::vector<at::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<at::Tensor>& inputs,
                                   const std::vector<at::Tensor>& params, bool reentrant_compat) {
  if (!at::GradMode::is_enabled()) return fn(inputs);
  if (reentrant_compat && !any_requires_grad(inputs)) {
    at::NoGradGuard no_grad;
    return fn(inputs);
  }
  auto state = c10::make_intrusive<Recompute>();
  state->fn = fn;
  state->input_count = inputs.size();
  std::vector<at::Tensor> tensors;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) continue;
    state->slots.push_back(i);
    tensors.push_back(inputs[i]);
  }
  std::vector<at::Tensor> trained;
  for (const auto& p : params)
    if (p.defined() && p.requires_grad()) trained.push_back(p);
  // Nothing to differentiate: a plain call keeps no graph either.
  if (!any_requires_grad(tensors) && trained.empty()) return fn(inputs);
  tensors.insert(tensors.end(), trained.begin(), trained.end());
  return CheckpointFunction::apply(at::TensorList(tensors), state);
}

at::Tensor checkpoint(const std::function<at::Tensor(const at::Tensor&)>& fn,
                      const at::Tensor& input, const std::vector<at::Tensor>& params,
                      bool reentrant_compat) {
  // By value: the backward pass calls it after this frame is gone.
  return checkpoint([fn](const std::vector<at::Tensor>& in) { return std::vector<at::Tensor>{fn(in[0])}; },
                    {input}, params, reentrant_compat)[0];
}

void store_block_weights(torch::nn::Module& block, c10::ScalarType dtype) {
  if (dtype != at::kBFloat16 && dtype != at::kHalf)
    fail("storage dtype", std::string("block weights are stored in bfloat16 or float16, not ") + c10::toString(dtype));
  at::NoGradGuard no_grad;
  for (auto& t : block.parameters())
    if (t.is_floating_point()) t.set_data(t.to(dtype));
  for (auto& t : block.buffers())
    if (t.is_floating_point()) t.set_data(t.to(dtype));
}

namespace {

// While alive, `block`'s half-precision tensors hold float32 copies; the stored ones come back
// when it ends.
class Float32Compute {
 public:
  Float32Compute(const torch::nn::Module& block, const at::Tensor& first_input) {
    if (at::GradMode::is_enabled() || !first_input.defined() || first_input.scalar_type() != at::kFloat) return;
    auto upcast = [this](at::Tensor t) {
      if (t.scalar_type() != at::kBFloat16 && t.scalar_type() != at::kHalf) return;
      stored_.emplace_back(t, t.data());
      t.set_data(t.to(at::kFloat));
    };
    for (const auto& t : block.parameters()) upcast(t);
    for (const auto& t : block.buffers()) upcast(t);
  }
  ~Float32Compute() {
    for (auto& [tensor, stored] : stored_) tensor.set_data(stored);
  }
  Float32Compute(const Float32Compute&) = delete;
  Float32Compute& operator=(const Float32Compute&) = delete;

 private:
  std::vector<std::pair<at::Tensor, at::Tensor>> stored_;
};

at::Tensor first_defined(const std::vector<at::Tensor>& inputs) {
  for (const auto& t : inputs)
    if (t.defined()) return t;
  return {};
}

}  // namespace

std::vector<at::Tensor> GradientCheckpointing::run(const torch::nn::Module& owner,
                                                   const torch::nn::Module& block,
                                                   const CheckpointFn& fn,
                                                   const std::vector<at::Tensor>& inputs) const {
  if (!enabled || !owner.is_training() || !at::GradMode::is_enabled()) {
    Float32Compute compute(block, first_defined(inputs));
    return fn(inputs);
  }
  return checkpoint(fn, inputs, block.parameters(), reentrant_compat);
}

at::Tensor GradientCheckpointing::run(const torch::nn::Module& owner, const torch::nn::Module& block,
                                      const std::function<at::Tensor(const at::Tensor&)>& fn,
                                      const at::Tensor& input) const {
  if (!enabled || !owner.is_training() || !at::GradMode::is_enabled()) {
    Float32Compute compute(block, input);
    return fn(input);
  }
  return checkpoint(fn, input, block.parameters(), reentrant_compat);
}

}  // namespace kosmosg::nn
