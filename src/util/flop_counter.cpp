#include "kosmosg/util/flop_counter.h"

#include <ATen/record_function.h>

#include <atomic>
#include <optional>
#include <string_view>

#include "kosmosg/error.h"

namespace kosmosg {

namespace {

std::atomic<uint64_t> counted{0};
std::atomic<bool> counting{false};
std::atomic<uint64_t> generation{0};  // of the counter: a thread's depth from an earlier one is stale
// Depth of counted operators on this thread: one calling another (autocast re-dispatching,
// a convolution's own kernels) is counted once, at the outermost.
struct Depth {
  uint64_t generation = 0;
  int depth = 0;
};
thread_local Depth counted_depth;

enum class Kind { MatMul, AddMatMul, BatchMatMul, AddBatchMatMul, Convolution, ConvolutionBackward,
                  Attention, AttentionBackward, OneDnnLinear, OneDnnConvolution, Winograd };

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }
bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::optional<Kind> kind_of(std::string_view name) {
  if (name == "aten::mm") return Kind::MatMul;
  if (name == "aten::addmm") return Kind::AddMatMul;
  if (name == "aten::bmm") return Kind::BatchMatMul;
  if (name == "aten::baddbmm") return Kind::AddBatchMatMul;
  if (name == "aten::convolution") return Kind::Convolution;
  if (name == "aten::convolution_backward") return Kind::ConvolutionBackward;
  // The fused kernels (flash, memory-efficient, cuDNN, CPU); the math one is counted in its products.
  if (starts_with(name, "aten::_scaled_dot_product_") && name.find("_math") == std::string_view::npos)
    return ends_with(name, "_backward") ? Kind::AttentionBackward : Kind::Attention;
  if (name == "mkldnn::_linear_pointwise") return Kind::OneDnnLinear;
  if (name == "mkldnn::_convolution_pointwise") return Kind::OneDnnConvolution;
  if (name == "kosmosg::winograd_conv2d") return Kind::Winograd;
  return std::nullopt;
}

const at::Tensor* tensor_at(const c10::ArrayRef<const c10::IValue>& v, size_t i) {
  return i < v.size() && v[i].isTensor() ? &v[i].toTensor() : nullptr;
}

double product(const at::Tensor& a, const at::Tensor& b) {  // [.., n, m] · [.., m, p]
  const double batch = a.dim() == 3 ? static_cast<double>(a.size(0)) : 1.0;
  return 2.0 * batch * static_cast<double>(a.size(-2)) * static_cast<double>(a.size(-1)) *
         static_cast<double>(b.size(-1));
}

// The multiply-adds a direct convolution spends on each element of its larger side.
double per_element(const at::Tensor& weight) {
  return static_cast<double>(weight.numel()) / static_cast<double>(weight.size(0));
}

// A direct convolution over the larger side (the output, or a transposed convolution's input).
double convolution(const at::Tensor& large_side, const at::Tensor& weight) {
  return 2.0 * static_cast<double>(large_side.numel()) * per_element(weight);
}

// q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, Dv]: QKᵀ and the weights times V; the backward
// recomputes QKᵀ and forms the gradients of the scores, V, Q and K.
double attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool backward) {
  const double rows = static_cast<double>(q.numel() / q.size(-1)) * static_cast<double>(k.size(-2));
  const double d = static_cast<double>(q.size(-1)), dv = static_cast<double>(v.size(-1));
  return 2.0 * rows * (backward ? 3 * d + 2 * dv : d + dv);
}

// What an operator computes, read from its inputs: its operations, or for a convolution counted
// on its output (known at the end), the multiply-adds per output element.
struct Count {
  double flops = 0;
  double per_output_element = 0;
};

Count count_of(Kind kind, const at::RecordFunction& fn) {
  const auto in = fn.inputs();
  const auto arg = [&](size_t i) { return tensor_at(in, i); };
  const auto flag = [&](size_t i) { return i < in.size() && in[i].isBool() && in[i].toBool(); };
  switch (kind) {
    case Kind::MatMul:
    case Kind::BatchMatMul:
      return {arg(0) && arg(1) ? product(*arg(0), *arg(1)) : 0};
    case Kind::AddMatMul:
    case Kind::AddBatchMatMul:
      return {arg(1) && arg(2) ? product(*arg(1), *arg(2)) : 0};
    case Kind::Convolution:  // input, weight, ..., transposed (6): a transposed one on its input
      if (!arg(0) || !arg(1)) return {};
      return flag(6) ? Count{convolution(*arg(0), *arg(1))} : Count{0, per_element(*arg(1))};
    case Kind::ConvolutionBackward: {
      // grad_output, input, weight, ..., transposed (7), ..., output_mask (10)
      if (!arg(0) || !arg(1) || !arg(2) || in.size() < 11) return {};
      const double one = convolution(flag(7) ? *arg(1) : *arg(0), *arg(2));
      const auto mask = in[10].toBoolList();
      return {one * ((mask.get(0) ? 1 : 0) + (mask.get(1) ? 1 : 0))};
    }
    case Kind::Attention:
      return {arg(0) && arg(1) && arg(2) ? attention(*arg(0), *arg(1), *arg(2), false) : 0};
    case Kind::AttentionBackward:  // grad_out first, then query, key, value
      return {arg(1) && arg(2) && arg(3) ? attention(*arg(1), *arg(2), *arg(3), true) : 0};
    case Kind::OneDnnLinear:  // x [.., in], weight [out, in]
      if (!arg(0) || !arg(1)) return {};
      return {2.0 * static_cast<double>(arg(0)->numel()) * static_cast<double>(arg(1)->size(0))};
    case Kind::OneDnnConvolution:  // x, the packed weight [out, in, kh, kw], ...
      return {0, arg(1) ? per_element(*arg(1)) : 0};
    case Kind::Winograd:  // 3×3, stride 1, padding 1: an output position per input one
      if (!arg(0) || !arg(1)) return {};
      return {2.0 * static_cast<double>(arg(0)->numel() / arg(0)->size(1)) * static_cast<double>(arg(1)->numel())};
  }
  return {};
}

// What on_start hands on_end (the inputs can be read only at the start, the outputs only at the
// end); an empty count inside another counted operator.
struct Marker : at::ObserverContext {
  Count count;
};

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  const auto kind = kind_of(fn.name());
  if (!kind) return nullptr;
  auto& d = counted_depth;
  if (d.generation != generation.load()) d = {generation.load(), 0};
  auto marker = std::make_unique<Marker>();
  if (d.depth++ == 0) marker->count = count_of(*kind, fn);
  return marker;
}

void on_end(const at::RecordFunction& fn, at::ObserverContext* context) {
  if (!context) return;
  --counted_depth.depth;
  const Count& count = static_cast<const Marker*>(context)->count;
  double flops = count.flops;
  if (count.per_output_element > 0) {
    const auto& out = fn.outputs();
    if (!out.empty() && out[0].isTensor())
      flops += 2.0 * static_cast<double>(out[0].toTensor().numel()) * count.per_output_element;
  }
  counted += static_cast<uint64_t>(flops);
}

}  // namespace

FlopCounter::FlopCounter() {
  if (counting.exchange(true)) fail("FlopCounter", "another FlopCounter is already counting");
  counted = 0;
  ++generation;
  handle_ = at::addGlobalCallback(at::RecordFunctionCallback(on_start, on_end).needsInputs(true).needsOutputs(true));
}

FlopCounter::~FlopCounter() {
  at::removeCallback(handle_);
  counting = false;
}

double FlopCounter::total() const { return static_cast<double>(counted.load()); }

}  // namespace kosmosg
