#include "nn/onednn.h"

#include <ATen/Context.h>
#include <ATen/Functions.h>
#include <ATen/core/grad_mode.h>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR >= 2
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <variant>
#include <vector>
#endif

namespace kosmosg::nn::onednn {
namespace {

bool cpu_float(const at::Tensor& t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; }

#if TORCH_VERSION_MAJOR >= 2
std::optional<c10::OperatorHandle> find_op(const char* name) {
  if (!at::hasMKLDNN()) return std::nullopt;
  return c10::Dispatcher::singleton().findSchema({name, ""});
}

const std::optional<c10::OperatorHandle>& linear_op() {
  static const auto op = find_op("mkldnn::_linear_pointwise");
  return op;
}

const std::optional<c10::OperatorHandle>& conv_op() {
  static const auto op = find_op("mkldnn::_convolution_pointwise");
  return op;
}

// The trailing arguments of both pointwise ops: no fused activation.
void push_no_post_op(torch::jit::Stack& stack) {
  stack.emplace_back("none");
  stack.emplace_back(c10::List<std::optional<c10::Scalar>>());
  stack.emplace_back("");
}

c10::IValue optional_tensor(const at::Tensor& t) { return t.defined() ? c10::IValue(t.contiguous()) : c10::IValue(); }

const torch::ExpandingArray<2>* explicit_padding(const ConvOptions& options) {
  if (!std::holds_alternative<torch::enumtype::kZeros>(options.padding_mode())) return nullptr;
  return std::get_if<torch::ExpandingArray<2>>(&options.padding());
}

std::vector<int64_t> vec(at::IntArrayRef a) { return a.vec(); }
#endif

}  // namespace

bool fits(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!cpu_float(x) || !cpu_float(weight) || x.numel() == 0) return false;
  if (bias.defined() && !cpu_float(bias)) return false;
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad())))
    return false;
  return at::globalContext().userEnabledMkldnn();
}

// The gain was measured on 2.x only (about 15 % on the VAE's 512² layers); 1.x keeps NCHW.
at::Tensor channels_last_on_cpu(const at::Tensor& x) {
  const bool wanted = TORCH_VERSION_MAJOR >= 2 && x.device().is_cpu() && at::hasMKLDNN();
  return wanted ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
}

#if TORCH_VERSION_MAJOR >= 2

std::optional<at::Tensor> linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!linear_op()) return std::nullopt;
  torch::jit::Stack stack{x.contiguous(), weight.contiguous(), optional_tensor(bias)};
  push_no_post_op(stack);
  linear_op()->callBoxed(&stack);
  return stack.front().toTensor();
}

bool can_pack_conv(const ConvOptions& options) {
  return conv_op().has_value() && at::globalContext().userEnabledMkldnn() && explicit_padding(options);
}

at::Tensor pack_conv_weight(const at::Tensor& weight, const ConvOptions& options,
                            at::IntArrayRef input_sizes) {
  return at::mkldnn_reorder_conv2d_weight(weight.contiguous().to_mkldnn(), *explicit_padding(options),
                                          options.stride(), options.dilation(), options.groups(),
                                          input_sizes);
}

at::Tensor conv2d_packed(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias,
                         const ConvOptions& options) {
  torch::jit::Stack stack{x.contiguous(), packed, optional_tensor(bias),
                          vec(*explicit_padding(options)), vec(options.stride()),
                          vec(options.dilation()), options.groups()};
  push_no_post_op(stack);
  conv_op()->callBoxed(&stack);
  return stack.front().toTensor();
}

#else  // LibTorch 1.x registers neither kernel: everything takes ATen's own paths.

std::optional<at::Tensor> linear(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  return std::nullopt;
}

bool can_pack_conv(const ConvOptions&) { return false; }

at::Tensor pack_conv_weight(const at::Tensor& weight, const ConvOptions&, at::IntArrayRef) {
  return weight;
}

at::Tensor conv2d_packed(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const ConvOptions&) {
  TORCH_CHECK(false, "packed convolution weights need LibTorch 2.x");
}

#endif

}  // namespace kosmosg::nn::onednn
