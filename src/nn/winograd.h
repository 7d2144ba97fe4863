#pragma once
// 3×3 convolutions by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray, 2015): each 4×4
// output tile costs 36 products per channel pair instead of 144, so the convolution becomes 36
// matrix products a quarter the size of the direct one, between two cheap linear transforms.
// CPU float32 inference only; the result equals at::conv2d's up to float32 rounding.
#include <ATen/core/Tensor.h>
#include <torch/nn/options/conv.h>

namespace kosmosg::nn::winograd {

using ConvOptions = torch::nn::detail::ConvNdOptions<2>;

// Whether conv2d below computes this convolution and gains by it: a 3×3 kernel, stride 1,
// dilation 1, one group, zero padding of 1; CPU float32 tensors needing no gradient; and enough
// channels and output pixels for the transforms to cost less than the products they save.
bool pays_for(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const ConvOptions& options);

// The convolution of x [N, Cin, H, W] with weight [Cout, Cin, 3, 3] and bias [Cout] (or undefined)
// at padding 1, in x's memory format.
at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace kosmosg::nn::winograd
