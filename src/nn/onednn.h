#pragma once
// oneDNN kernels that LibTorch 2.x registers for its own graph compiler but keeps out of its C++
// API: a linear, and a convolution whose weight was reordered once into oneDNN's blocked layout
// (at::conv2d reorders it on every call). They have no backward: inference only.
#include <ATen/core/Tensor.h>
#include <torch/nn/options/conv.h>

#include <optional>

namespace kosmosg::nn::onednn {

// What a Conv2d module holds as its `options`.
using ConvOptions = torch::nn::detail::ConvNdOptions<2>;

// Whether these tensors can take the paths below: all on CPU in float32, none needing a gradient.
bool fits(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// x in channels-last memory where LibTorch 2.x's oneDNN serves the CPU, else x as it is: oneDNN
// then runs convolutions without reordering activations around each one.
at::Tensor channels_last_on_cpu(const at::Tensor& x);

// x·Wᵀ + b on oneDNN's matmul; nullopt where this LibTorch has no oneDNN linear.
std::optional<at::Tensor> linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// Whether this LibTorch (2.x with oneDNN) can pack the weight of a convolution with `options`
// (zero padding given as numbers).
bool can_pack_conv(const ConvOptions& options);
// The weight [out, in, kh, kw] reordered for inputs of `input_sizes`: a oneDNN tensor with the
// same sizes; `to_dense()` gives the weight back.
at::Tensor pack_conv_weight(const at::Tensor& weight, const ConvOptions& options,
                            at::IntArrayRef input_sizes);
// The convolution of `x` with a packed weight.
at::Tensor conv2d_packed(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& bias,
                         const ConvOptions& options);

}  // namespace kosmosg::nn::onednn
