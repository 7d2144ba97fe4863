#pragma once
// The affine map y = x·Wᵀ + b that every model's linear layers compute. On CPU, in float32 and
// where no gradient is needed, it runs on oneDNN's matmul rather than the BLAS behind at::linear
// (MKL's sgemm reaches 100-150 GFLOP/s on the project's AMD machine, oneDNN 130-215).
#include <ATen/core/Tensor.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

namespace kosmosg::nn {

// at::linear(x, weight, bias) for x [..., in], weight [out, in], bias [out] or undefined.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});

// torch::nn::Linear (same options and parameters) whose forward is the linear above.
class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  at::Tensor forward(const at::Tensor& x);
};
TORCH_MODULE(Linear);

}  // namespace kosmosg::nn
