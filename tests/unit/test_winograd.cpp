#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kosmosg/nn/lora.h"
#include "nn/winograd.h"
#include "support.h"

namespace {

using namespace kosmosg;
using kosmosg::test::relative_l2;

at::Tensor direct(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return at::conv2d(x.to(at::kDouble), w.to(at::kDouble), b.defined() ? b.to(at::kDouble) : b, 1, 1).to(at::kFloat);
}

// Sides that are and are not multiples of the tile, one and several images, with and without
// bias, channel counts across the 64-channel blocks, both memory formats.
TEST(Winograd, EqualsTheDirectConvolution) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  struct Case { int64_t n, cin, cout, h, w; bool bias; bool channels_last; };
  for (const Case& c : {Case{1, 8, 8, 8, 8, true, false}, Case{2, 70, 130, 13, 9, true, false},
                        Case{1, 64, 64, 1, 1, false, true}, Case{3, 3, 5, 5, 18, true, true},
                        Case{1, 128, 64, 33, 31, false, false},
                        Case{1, 1024, 1040, 7, 6, true, false}}) {  // filters split in blocks of channels
    auto x = torch::randn({c.n, c.cin, c.h, c.w});
    if (c.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
    const auto w = torch::randn({c.cout, c.cin, 3, 3}) / std::sqrt(9.0 * c.cin);
    const auto b = c.bias ? torch::randn({c.cout}) : at::Tensor();
    const auto y = nn::winograd::conv2d(x, w, b);
    SCOPED_TRACE(c10::str(x.sizes(), " -> ", c.cout, c.bias ? " with bias" : ""));
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{c.n, c.cout, c.h, c.w}));
    EXPECT_EQ(y.is_contiguous(at::MemoryFormat::ChannelsLast), c.channels_last);
    EXPECT_LT(relative_l2(y, direct(x, w, b)), 1e-5);
    EXPECT_LT((y - direct(x, w, b)).abs().max().item<double>(), 1e-4);
  }
}

TEST(Winograd, TakesOnlyTheConvolutionsItComputesAndGainsOn) {
  const auto options = [](int64_t stride, int64_t padding) {
    return nn::winograd::ConvOptions(256, 256, 3).stride(stride).padding(padding);
  };
  const auto x = torch::randn({1, 256, 32, 32});
  const auto w = torch::randn({256, 256, 3, 3});
  const auto b = torch::randn({256});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(nn::winograd::pays_for(x, w, b, options(1, 1)));
  EXPECT_FALSE(nn::winograd::pays_for(x, w, b, options(2, 1)));
  EXPECT_FALSE(nn::winograd::pays_for(x, w, b, options(1, 0)));
  EXPECT_FALSE(nn::winograd::pays_for(x, w, b, nn::winograd::ConvOptions(256, 256, 3).padding(1).groups(2)));
  EXPECT_FALSE(nn::winograd::pays_for(x, torch::randn({256, 256, 1, 1}), b, options(1, 1)));
  EXPECT_FALSE(nn::winograd::pays_for(x.slice(2, 0, 8), w, b, options(1, 1)));      // few pixels
  EXPECT_FALSE(nn::winograd::pays_for(x.to(at::kDouble), w.to(at::kDouble), b.to(at::kDouble), options(1, 1)));
  EXPECT_FALSE(nn::winograd::pays_for(x.slice(1, 0, 128), w.slice(1, 0, 128), b, options(1, 1)));  // few channels
  // Filters whose transform (151 MB) exceeds the workspace: in blocks of output channels where
  // one chunk holds every tile of two images, not for one, nor where they would be transformed
  // again for every chunk.
  const auto large = torch::empty({1024, 1024, 3, 3});
  EXPECT_TRUE(nn::winograd::pays_for(torch::empty({2, 1024, 32, 32}), large, {}, options(1, 1)));
  EXPECT_FALSE(nn::winograd::pays_for(torch::empty({1, 1024, 32, 32}), large, {}, options(1, 1)));
  EXPECT_FALSE(nn::winograd::pays_for(torch::empty({1, 1024, 128, 128}), large, {}, options(1, 1)));
  torch::GradMode::set_enabled(true);
  EXPECT_FALSE(nn::winograd::pays_for(x, w.clone().requires_grad_(true), b, options(1, 1)));
}

// A LoRACompatibleConv takes the path by itself at inference, and the direct one for training.
TEST(Winograd, ConvLayerUsesItAtInferenceOnly) {
  torch::manual_seed(0);
  nn::LoRACompatibleConv conv(torch::nn::Conv2dOptions(256, 256, 3).padding(1));
  const auto x = torch::randn({1, 256, 36, 36});
  const auto reference = direct(x, conv->weight.detach(), conv->bias.detach());
  at::Tensor inference;
  {
    torch::NoGradGuard no_grad;
    inference = conv->forward(x);
  }
  EXPECT_TRUE(torch::equal(inference, nn::winograd::conv2d(x, conv->weight.detach(), conv->bias.detach())));
  EXPECT_LT(relative_l2(inference, reference), 1e-5);
  auto y = conv->forward(x);
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_TRUE(conv->weight.grad().defined());
}

}  // namespace
