#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kosmosg/error.h"
#include "kosmosg/nn/linear.h"
#include "kosmosg/nn/lora.h"
#include "kosmosg/util/flop_counter.h"
#include "nn/winograd.h"

namespace {

using namespace kosmosg;

TEST(FlopCounter, CountsALinearLayerForwardAndBackward) {
  auto x = torch::randn({8, 16}, torch::requires_grad());
  auto w = torch::randn({32, 16}, torch::requires_grad());
  auto b = torch::randn({32}, torch::requires_grad());
  FlopCounter counter;
  auto y = at::linear(x, w, b);
  EXPECT_EQ(counter.total(), 2.0 * 8 * 16 * 32);
  y.sum().backward();  // the gradients of x and of w: one product each
  EXPECT_EQ(counter.total(), 3 * 2.0 * 8 * 16 * 32);
}

TEST(FlopCounter, CountsBatchedProductsAndConvolutions) {
  FlopCounter counter;
  at::bmm(torch::randn({3, 4, 5}), torch::randn({3, 5, 6}));
  EXPECT_EQ(counter.total(), 2.0 * 3 * 4 * 5 * 6);

  auto x = torch::randn({2, 3, 8, 8}, torch::requires_grad());
  auto w = torch::randn({4, 3, 3, 3}, torch::requires_grad());
  const double before = counter.total();
  auto y = at::conv2d(x, w, {}, 1, 1);
  const double forward = 2.0 * y.numel() * (3 * 3 * 3);
  EXPECT_EQ(counter.total() - before, forward);
  y.sum().backward();  // the gradients of the input and of the weight, each a convolution's worth
  EXPECT_EQ(counter.total() - before, 3 * forward);
  // Strided and transposed: counted on the output, and on a transposed one's input.
  const double mid = counter.total();
  torch::NoGradGuard no_grad;
  const auto strided = at::conv2d(x, w, {}, 2, 1);
  EXPECT_EQ(counter.total() - mid, 2.0 * strided.numel() * 27);
  const double before_transposed = counter.total();
  at::conv_transpose2d(x, torch::randn({3, 5, 2, 2}), {}, 2);
  EXPECT_EQ(counter.total() - before_transposed, 2.0 * x.numel() * (5 * 2 * 2));
}

TEST(FlopCounter, CountsAttentionAndKosmosgOwnKernelsOnce) {
  torch::NoGradGuard no_grad;
  FlopCounter counter;
  const auto q = torch::randn({1, 2, 16, 8}), k = torch::randn({1, 2, 12, 8}), v = torch::randn({1, 2, 12, 4});
#if TORCH_VERSION_MAJOR >= 2
  at::scaled_dot_product_attention(q, k, v);
#else
  at::matmul(at::softmax(at::matmul(q, k.transpose(-1, -2)), -1), v);
#endif
  EXPECT_EQ(counter.total(), 2.0 * 2 * 16 * 12 * (8 + 4));

  // kosmosg's oneDNN linear and Winograd convolution (CPU inference) count as what they compute.
  const auto x = torch::randn({5, 16}), w = torch::randn({24, 16});
  double before = counter.total();
  nn::linear(x, w, torch::randn({24}));
  EXPECT_EQ(counter.total() - before, 2.0 * 5 * 16 * 24);
  const auto image = torch::randn({1, 8, 6, 6}), filter = torch::randn({16, 8, 3, 3});
  before = counter.total();
  nn::winograd::conv2d(image, filter, {});
  EXPECT_EQ(counter.total() - before, 2.0 * 36 * 16 * 8 * 9);
  nn::LoRACompatibleConv conv(torch::nn::Conv2dOptions(8, 16, 3).padding(1));
  nn::set_weight_packing(*conv, true);
  before = counter.total();
  conv->forward(image);
  EXPECT_EQ(counter.total() - before, 2.0 * 36 * 16 * 8 * 9);
}

TEST(FlopCounter, OneAtATimeAndOnlyWhileItLives) {
  {
    FlopCounter counter;
    EXPECT_THROW(FlopCounter(), Error);
  }
  at::mm(torch::randn({4, 4}), torch::randn({4, 4}));
  FlopCounter counter;
  EXPECT_EQ(counter.total(), 0);
}

}  // namespace
