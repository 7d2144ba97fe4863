#include "kosmosg/nn/linear.h"

#include <ATen/Functions.h>

#include "nn/onednn.h"

namespace kosmosg::nn {

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (weight.dim() == 2 && onednn::fits(x, weight, bias))
    if (auto y = onednn::linear(x, weight, bias)) return *y;
  return at::linear(x, weight, bias);
}

at::Tensor LinearImpl::forward(const at::Tensor& x) {
  return linear(x, weight, bias);
}

}  // namespace kosmosg::nn
