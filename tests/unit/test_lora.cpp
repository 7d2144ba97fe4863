#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>

#include "kosmosg/error.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/lora.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/pipeline/diffusion.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;
using namespace kosmosg;
using test::expect_error;

class Lora : public ::testing::Test {
 protected:
  void SetUp() override {
    KOSMOSG_REQUIRE_SHARED_DATA();
    work = fs::temp_directory_path() / ("kosmosg_lora_" + std::to_string(::getpid()));
    fs::create_directories(work);
    torch::manual_seed(0);
    unet = pipeline::DiffusionDecoder::from_folder(fixture()).unet();
    sample = torch::randn({2, 4, 8, 8});
    context = torch::randn({2, 77, 32});
  }
  void TearDown() override { fs::remove_all(work); }

  static std::string fixture() { return test::shared_dir() + "/fixtures/tiny-sd15"; }
  at::Tensor run() {
    torch::NoGradGuard no_grad;
    return unet->forward(sample, torch::tensor({500}), context);
  }
  models::LoraWeights kohya() {
    return models::read_lora(
        test::write_golden_lora("lora_kohya_unet_sd15_tiny", (work / "kohya.safetensors").string()));
  }
  fs::path work;
  models::UNet2DConditionModel unet{nullptr};
  at::Tensor sample, context;
};

TEST_F(Lora, StrengthZeroIsExactlyNoLoraAndStrengthChangesBetweenCalls) {
  const auto base = run();
  auto strength = models::attach_lora(kohya(), *unet, nullptr, 0.0);
  EXPECT_TRUE(torch::equal(run(), base));
  *strength = 0.8;
  const auto adapted = run();
  EXPECT_GT((adapted - base).abs().max().item<double>(), 1e-3);
  *strength = 0.4;
  const auto half = run();
  EXPECT_FALSE(torch::allclose(half, adapted));
  models::remove_lora(*unet);
  EXPECT_TRUE(torch::equal(run(), base));
}

TEST_F(Lora, MergedEqualsUnmergedAndSeveralCompose) {
  const auto lora = kohya();
  models::attach_lora(lora, *unet, nullptr, 0.7);
  const auto one = run();
  models::attach_lora(lora, *unet, nullptr, 0.3);
  const auto two = run();
  // Two copies at 0.7 and 0.3 act as one at 1.0.
  models::remove_lora(*unet);
  models::attach_lora(lora, *unet, nullptr, 1.0);
  EXPECT_TRUE(torch::allclose(run(), two, 1e-4, 1e-5));
  EXPECT_FALSE(torch::allclose(one, two));
  models::merge_lora(*unet);
  EXPECT_TRUE(torch::allclose(run(), two, 1e-4, 1e-5));
}

TEST_F(Lora, ConvLayersOfEveryGeometryAndVectorAlphas) {
  // LoCon-style updates on 3×3 convs (stride 1 and the stride-2 downsampler) and a Linear,
  // with alphas stored as shape [1].
  io::TensorMap t;
  auto conv = [&](const std::string& name, int64_t in, int64_t out, int64_t k) {
    t["lora_unet_" + name + ".lora_down.weight"] = torch::randn({2, in, k, k}) * 0.3;
    t["lora_unet_" + name + ".lora_up.weight"] = torch::randn({out, 2, 1, 1}) * 0.3;
    t["lora_unet_" + name + ".alpha"] = torch::tensor({1.0f});
  };
  conv("down_blocks_0_resnets_0_conv1", 16, 16, 3);
  conv("down_blocks_0_downsamplers_0_conv", 16, 16, 3);
  conv("up_blocks_0_resnets_0_conv_shortcut", 64, 32, 1);
  t["lora_unet_down_blocks_1_resnets_0_time_emb_proj.lora_down.weight"] = torch::randn({2, 64});
  t["lora_unet_down_blocks_1_resnets_0_time_emb_proj.lora_up.weight"] = torch::randn({16, 2});
  const auto lora = models::parse_lora(t, "locon");
  const auto base = run();
  models::attach_lora(lora, *unet, nullptr, 1.0);
  const auto unmerged = run();
  EXPECT_GT((unmerged - base).abs().max().item<double>(), 1e-3);
  models::merge_lora(*unet);
  EXPECT_TRUE(torch::allclose(run(), unmerged, 1e-4, 1e-5));
}

TEST_F(Lora, DiffusersFormsMatchTheKohyaForm) {
  const auto w_down = torch::randn({4, 32}), w_up = torch::randn({32, 4});
  const std::string layer = "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_out.0";
  auto output_with = [&](const io::TensorMap& t) {
    models::remove_lora(*unet);
    models::attach_lora(models::parse_lora(t, "file"), *unet, nullptr, 1.0);
    return run();
  };
  const auto kohya = output_with({{"lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_down.weight", w_down},
                                  {"lora_unet_down_blocks_2_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight", w_up}});
  const std::string attn = "down_blocks.2.attentions.0.transformer_blocks.0.attn2";
  EXPECT_TRUE(torch::equal(output_with({{"unet." + attn + ".processor.to_out_lora.down.weight", w_down},
                                        {"unet." + attn + ".processor.to_out_lora.up.weight", w_up}}),
                           kohya));
  EXPECT_TRUE(torch::equal(output_with({{attn + ".processor.to_out_lora.down.weight", w_down},
                                        {attn + ".processor.to_out_lora.up.weight", w_up}}),
                           kohya));
  EXPECT_TRUE(torch::equal(output_with({{"unet." + layer + ".lora.down.weight", w_down},
                                        {"unet." + layer + ".lora.up.weight", w_up}}),
                           kohya));
  EXPECT_TRUE(torch::equal(output_with({{"unet." + layer + ".lora_A.weight", w_down},
                                        {"unet." + layer + ".lora_B.weight", w_up}}),
                           kohya));
  // An alpha of 2 at rank 4 halves the update, the same as strength 0.5.
  const auto with_alpha = output_with({{"unet." + layer + ".lora.down.weight", w_down},
                                       {"unet." + layer + ".lora.up.weight", w_up},
                                       {"unet." + layer + ".alpha", torch::tensor(2.0)}});
  models::remove_lora(*unet);
  models::attach_lora(models::parse_lora({{"unet." + layer + ".lora.down.weight", w_down},
                                          {"unet." + layer + ".lora.up.weight", w_up}},
                                         "file"),
                      *unet, nullptr, 0.5);
  EXPECT_TRUE(torch::allclose(run(), with_alpha, 1e-5, 1e-6));
}

TEST_F(Lora, TextEncoderLayersAdaptTheClipTextModel) {
  auto clip = models::load_clip_text_model(fixture() + "/text_encoder");
  clip->eval();
  const auto ids = torch::randint(0, 49408, {1, 77});
  auto encode = [&] {
    torch::NoGradGuard no_grad;
    return clip->forward(ids).last_hidden_state;
  };
  const auto base = encode();
  const int64_t intermediate = clip->named_parameters()["text_model.encoder.layers.1.mlp.fc2.weight"].size(1);
  io::TensorMap t{{"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", torch::randn({4, 32})},
                  {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", torch::randn({32, 4})},
                  {"lora_te_text_model_encoder_layers_1_mlp_fc2.lora_down.weight", torch::randn({4, intermediate})},
                  {"lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight", torch::randn({32, 4})},
                  {"lora_te_text_model_encoder_layers_1_mlp_fc2.alpha", torch::tensor(4.0)}};
  const auto lora = models::parse_lora(t, "te");
  ASSERT_EQ(lora.text_encoder.size(), 2u);
  auto strength = models::attach_lora(lora, *unet, clip.ptr().get(), 1.0);
  EXPECT_GT((encode() - base).abs().max().item<double>(), 1e-3);
  *strength = 0;
  EXPECT_TRUE(torch::equal(encode(), base));
  // Without a text encoder (Kosmos-G) its layers are skipped and counted.
  size_t skipped = 0;
  models::attach_lora(lora, *unet, nullptr, 1.0, &skipped);
  EXPECT_EQ(skipped, 2u);
}

TEST_F(Lora, BadFilesAreErrorsThatNameTheProblem) {
  const auto base = run();
  expect_error([&] { models::read_lora((work / "missing.safetensors").string()); }, {"missing.safetensors"});
  expect_error(
      [&] {
        models::parse_lora({{"lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a", torch::zeros({2, 2})},
                            {"model.diffusion_model.out.0.weight", torch::zeros({2})}},
                           "loha.safetensors");
      },
      {"loha.safetensors", "hada_w1_a", "model.diffusion_model.out.0.weight"});
  expect_error(
      [&] {
        models::parse_lora({{"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", torch::zeros({2, 16, 3, 3})}},
                           "half.safetensors");
      },
      {"half.safetensors", "no up weight"});
  expect_error(
      [&] {
        models::parse_lora({{"lora_unet_x.lora_down.weight", torch::zeros({2, 2})},
                            {"lora_unet_x.lora_up.weight", torch::zeros({2, 2})},
                            {"lora_unet_x.alpha", torch::zeros({2})}},
                           "alpha.safetensors");
      },
      {"lora_unet_x.alpha", "scalar"});
  // Layers this UNet lacks (an SDXL LoRA, say) are listed; nothing is attached.
  expect_error(
      [&] {
        io::TensorMap t{{"lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight", torch::zeros({4, 32, 1, 1})},
                        {"lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight", torch::zeros({32, 4, 1, 1})},
                        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", torch::ones({4, 16, 1, 1})},
                        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", torch::ones({16, 4, 1, 1})}};
        models::attach_lora(models::parse_lora(t, "xl.safetensors"), *unet, nullptr, 1.0);
      },
      {"xl.safetensors", "down_blocks_9_attentions_0_proj_in", "1 LoRA layers match no layer"});
  EXPECT_TRUE(torch::equal(run(), base));
  // A shape that does not fit (a LoRA for wider layers) names the layer; nothing is attached.
  expect_error(
      [&] {
        io::TensorMap t{{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", torch::ones({4, 320, 1, 1})},
                        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", torch::ones({320, 4, 1, 1})},
                        {"lora_unet_down_blocks_0_attentions_0_proj_out.lora_down.weight", torch::ones({4, 16, 1, 1})},
                        {"lora_unet_down_blocks_0_attentions_0_proj_out.lora_up.weight", torch::ones({16, 4, 1, 1})}};
        models::attach_lora(models::parse_lora(t, "wide.safetensors"), *unet, nullptr, 1.0);
      },
      {"wide.safetensors", "down_blocks.0.attentions.0.proj_in", "[4, 320, 1, 1]", "[16, 16, 1, 1]"});
  EXPECT_TRUE(torch::equal(run(), base));
}

}  // namespace
