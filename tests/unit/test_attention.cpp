#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kosmosg/nn/attention.h"
#include "support.h"

namespace {

using kosmosg::test::relative_l2;
using kosmosg::nn::AttentionOptions;

at::Tensor reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias) {
  auto s = at::matmul(q.to(at::kDouble), k.to(at::kDouble).transpose(-2, -1)) / std::sqrt(double(q.size(-1)));
  if (bias.defined()) s = s + bias.to(at::kDouble);
  return at::matmul(at::softmax(s, -1), v.to(at::kDouble)).to(at::kFloat);
}

}  // namespace

// Long keys split the queries into blocks with a partial tail block; every variant must agree
// with the plain formula.
TEST(Attention, BlockedKernelMatchesTheFormula) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const int64_t b = 2, h = 2, lq = 1100, lk = 4096, d = 8;
  auto q = torch::randn({b, h, lq, d}), k = torch::randn({b, h, lk, d}), v = torch::randn({b, h, lk, d});
  EXPECT_LT(relative_l2(kosmosg::nn::attention(q, k, v), reference(q, k, v, {})), 1e-5);

  auto keep = torch::rand({b, 1, 1, lk}) > 0.3;
  AttentionOptions masked;
  masked.mask = keep;
  auto bias = at::where(keep, 0.0f, std::numeric_limits<float>::lowest()).to(at::kFloat);
  EXPECT_LT(relative_l2(kosmosg::nn::attention(q, k, v, masked), reference(q, k, v, bias)), 1e-5);

  auto sq = torch::randn({b, h, lq, d});
  auto sk = torch::randn({b, h, lq, d}), sv = torch::randn({b, h, lq, d});
  AttentionOptions causal;
  causal.causal = true;
  auto causal_bias = at::where(torch::ones({lq, lq}, torch::kBool).tril(), 0.0f, -1e30f);
  EXPECT_LT(relative_l2(kosmosg::nn::attention(sq, sk, sv, causal), reference(sq, sk, sv, causal_bias)), 1e-5);
}

TEST(Attention, GradientsFlowWhenInputsRequireThem) {
  torch::manual_seed(1);
  auto q = torch::randn({1, 2, 5, 4}, torch::requires_grad());
  auto k = torch::randn({1, 2, 7, 4}), v = torch::randn({1, 2, 7, 4});
  auto out = kosmosg::nn::attention(q, k, v);
  out.sum().backward();
  ASSERT_TRUE(q.grad().defined());
  EXPECT_GT(q.grad().abs().sum().item<double>(), 0.0);
  torch::NoGradGuard no_grad;
  EXPECT_LT(relative_l2(out.detach(), reference(q.detach(), k, v, {})), 1e-5);
}

TEST(Attention, MasksFitHalfPrecisionTypes) {
  // The masked-out bias is the dtype's own lowest value: float's would overflow bfloat16 and half.
  torch::manual_seed(0);
  auto q = torch::randn({1, 2, 5, 8}), k = torch::randn({1, 2, 5, 8}), v = torch::randn({1, 2, 5, 8});
  kosmosg::nn::AttentionOptions options;
  options.causal = true;
  options.mask = torch::tensor({true, true, true, false, true}, torch::kBool).view({1, 1, 1, 5});
  const auto reference = kosmosg::nn::attention(q, k, v, options);
  const auto low = kosmosg::nn::attention(q.to(torch::kBFloat16), k.to(torch::kBFloat16), v.to(torch::kBFloat16), options);
  ASSERT_TRUE(torch::isfinite(low).all().item<bool>());
  EXPECT_TRUE(torch::allclose(low.to(torch::kFloat), reference, 0.05, 0.05));
}
