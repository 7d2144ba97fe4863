#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kosmosg/nn/linear.h"
#include "kosmosg/nn/lora.h"
#include "nn/onednn.h"

namespace {

using namespace kosmosg;

TEST(Linear, MatchesAtLinearOnEveryPath) {
  torch::manual_seed(0);
  auto weight = torch::randn({24, 16});
  auto bias = torch::randn({24});
  auto x = torch::randn({2, 5, 16});
  auto strided = torch::randn({2, 16, 5}).transpose(1, 2);
  {
    torch::NoGradGuard no_grad;
    for (const auto& input : {x, strided}) {
      EXPECT_TRUE(torch::allclose(nn::linear(input, weight, bias), at::linear(input, weight, bias), 1e-5, 1e-5));
      EXPECT_TRUE(torch::allclose(nn::linear(input, weight), at::linear(input, weight), 1e-5, 1e-5));
    }
    EXPECT_EQ(nn::linear(x.slice(0, 0, 0), weight, bias).sizes(), (std::vector<int64_t>{0, 5, 24}));
  }
  // With a gradient wanted, the map is differentiated like at::linear's.
  auto w = weight.clone().requires_grad_(true);
  nn::linear(x, w, bias).sum().backward();
  EXPECT_TRUE(torch::allclose(w.grad(), x.sum(at::IntArrayRef{0, 1}).unsqueeze(0).expand({24, 16}), 1e-4, 1e-4));
}

class ConvPacking : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    conv = nn::LoRACompatibleConv(torch::nn::Conv2dOptions(32, 48, 3).padding(1));
    plain_weight = conv->weight.detach().clone();
    x = torch::randn({1, 32, 4, 4});  // 512 values against 13824 weights: worth packing
    torch::NoGradGuard no_grad;
    reference = conv->forward(x);
  }
  at::Tensor run() {
    torch::NoGradGuard no_grad;
    return conv->forward(x);
  }

  nn::LoRACompatibleConv conv{nullptr};
  at::Tensor plain_weight, x, reference;
};

TEST_F(ConvPacking, PackedWeightGivesTheSameConvolution) {
  conv->set_weight_packing(true);
  EXPECT_TRUE(torch::allclose(run(), reference, 1e-5, 1e-5));
  EXPECT_EQ(conv->weight.is_mkldnn(), nn::onednn::can_pack_conv(conv->options));
  EXPECT_EQ(conv->named_parameters()["weight"].is_mkldnn(), nn::onednn::can_pack_conv(conv->options));
  EXPECT_EQ(conv->weight.sizes(), plain_weight.sizes());
  EXPECT_TRUE(torch::allclose(run(), reference, 1e-5, 1e-5));  // the packed weight, reused
  conv->set_weight_packing(false);
  EXPECT_FALSE(conv->weight.is_mkldnn());
  EXPECT_TRUE(torch::equal(conv->weight, plain_weight));
  EXPECT_TRUE(torch::equal(conv->named_parameters()["weight"], plain_weight));
}

TEST_F(ConvPacking, LargeInputsKeepThePlainWeight) {
  conv->set_weight_packing(true);
  x = torch::randn({1, 32, 32, 32});
  torch::NoGradGuard no_grad;
  conv->forward(x);
  EXPECT_FALSE(conv->weight.is_mkldnn());
}

TEST_F(ConvPacking, GradientsAndLoraRestoreThePlainWeight) {
  conv->set_weight_packing(true);
  run();
  // A forward that needs gradients runs on the plain weight and differentiates through it.
  conv->forward(x).sum().backward();
  EXPECT_FALSE(conv->weight.is_mkldnn());
  ASSERT_TRUE(conv->weight.grad().defined());
  EXPECT_TRUE(torch::equal(conv->weight, plain_weight));
  // A LoRA attached to a packed layer, and merged into it, sees the plain weight.
  run();
  nn::LoraUpdate update{torch::randn({2, 32, 3, 3}), torch::randn({48, 2, 1, 1}), 0, std::make_shared<double>(0.5)};
  conv->add_lora(update, "test");
  const auto with_lora = run();
  EXPECT_FALSE(torch::allclose(with_lora, reference, 1e-3, 1e-3));
  conv->merge_lora();
  EXPECT_TRUE(torch::allclose(run(), with_lora, 1e-4, 1e-4));
}

}  // namespace
