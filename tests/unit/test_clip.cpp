#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "kosmosg/error.h"
#include "kosmosg/eval/scores.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/dino.h"
#include "support.h"

namespace fs = std::filesystem;
namespace models = kosmosg::models;
using kosmosg::io::Json;

namespace {

using kosmosg::test::temp_dir;
using kosmosg::test::shared_path;
using kosmosg::test::error_of;
using kosmosg::test::relative_l2;

Json tiny_text_config() {
  return Json{{"hidden_size", 16},      {"intermediate_size", 32},
              {"num_hidden_layers", 1}, {"num_attention_heads", 2},
              {"vocab_size", 50},       {"max_position_embeddings", 8}};
}

}  // namespace

TEST(CLIPText, Sd15FixtureTextEncoderMatchesReference) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const fs::path root = shared_path() / "fixtures" / "tiny-sd15";
  auto model = models::load_clip_text_model((root / "text_encoder").string());
  auto expected = kosmosg::io::SafeTensors::open((root / "expected.safetensors").string());
  torch::NoGradGuard no_grad;
  const std::pair<std::string, std::string> cases[] = {{"prompt_ids", "prompt_hidden_states"},
                                                       {"negative_ids", "negative_hidden_states"}};
  for (const auto& [input, output] : cases) {
    auto out = model(expected.get("input." + input));
    EXPECT_LT(relative_l2(out.last_hidden_state, expected.get("output." + output)), 1e-4) << input;
  }
}

TEST(CLIPText, ConfigDefaultsAreTransformers) {
  auto text = models::CLIPTextConfig::from_json(Json::object());
  EXPECT_EQ(text.vocab_size, 49408);
  EXPECT_EQ(text.encoder.hidden_size, 512);
  EXPECT_EQ(text.encoder.intermediate_size, 2048);
  EXPECT_EQ(text.encoder.num_hidden_layers, 12);
  EXPECT_EQ(text.encoder.num_attention_heads, 8);
  EXPECT_EQ(text.encoder.hidden_act, "quick_gelu");
  EXPECT_DOUBLE_EQ(text.encoder.layer_norm_eps, 1e-5);
  EXPECT_EQ(text.max_position_embeddings, 77);
  EXPECT_EQ(text.eos_token_id, 49407);
  EXPECT_EQ(text.projection_dim, 512);

  auto vision = models::CLIPVisionConfig::from_json(Json::object());
  EXPECT_EQ(vision.encoder.hidden_size, 768);
  EXPECT_EQ(vision.encoder.intermediate_size, 3072);
  EXPECT_EQ(vision.encoder.num_hidden_layers, 12);
  EXPECT_EQ(vision.encoder.num_attention_heads, 12);
  EXPECT_EQ(vision.image_size, 224);
  EXPECT_EQ(vision.patch_size, 32);
  EXPECT_EQ(vision.num_channels, 3);

  auto clip = models::CLIPConfig::from_json(Json{
      {"projection_dim", 768},
      {"text_config", {{"hidden_size", 768}}},
      {"vision_config", {{"hidden_size", 1024}, {"num_attention_heads", 16}, {"patch_size", 14}}}});
  EXPECT_EQ(clip.projection_dim, 768);
  EXPECT_DOUBLE_EQ(clip.logit_scale_init_value, 2.6592);
  EXPECT_EQ(clip.text.encoder.hidden_size, 768);
  EXPECT_EQ(clip.text.encoder.num_hidden_layers, 12);
  EXPECT_EQ(clip.vision.encoder.hidden_size, 1024);
  EXPECT_EQ(clip.vision.patch_size, 14);

  auto dino = models::DinoViTConfig::from_json(Json::object());
  EXPECT_EQ(dino.embed_dim, 384);
  EXPECT_EQ(dino.depth, 12);
  EXPECT_EQ(dino.num_heads, 6);
  EXPECT_EQ(dino.patch_size, 16);
  EXPECT_EQ(models::DinoViTConfig::from_json(Json{{"img_size", {112}}}).img_size, 112);
}

TEST(CLIPText, BadConfigsAreNamed) {
  EXPECT_NE(error_of([] {
              models::CLIPTextConfig::from_json(Json{{"hidden_act", "swish"}});
            }).find("hidden_act is 'swish'"),
            std::string::npos);
  EXPECT_NE(
      error_of([] {
        models::CLIPTextConfig::from_json(Json{{"hidden_size", 10}, {"num_attention_heads", 3}});
      }).find("not divisible"),
      std::string::npos);
  EXPECT_NE(error_of([] {
              models::DinoViTConfig::from_json(Json{{"num_classes", 1000}});
            }).find("num_classes"),
            std::string::npos);
}

TEST(CLIPText, MissingWeightIsNamed) {
  auto config = tiny_text_config();
  models::CLIPTextModel source(models::CLIPTextConfig::from_json(config));
  auto weights = kosmosg::io::state_dict(*source);
  weights.erase("text_model.final_layer_norm.bias");
  const fs::path dir = temp_dir("clip", "missing_key");
  std::ofstream(dir / "config.json") << config.dump();
  kosmosg::io::save_safetensors((dir / "model.safetensors").string(), weights);
  const std::string error = error_of([&] { models::load_clip_text_model(dir.string()); });
  EXPECT_NE(error.find("missing keys"), std::string::npos) << error;
  EXPECT_NE(error.find("text_model.final_layer_norm.bias"), std::string::npos) << error;
}

TEST(CLIPText, RejectsTooManyPositionsAndUnknownIds) {
  models::CLIPTextModel model(models::CLIPTextConfig::from_json(tiny_text_config()));
  torch::NoGradGuard no_grad;
  EXPECT_NE(error_of([&] {
              model(torch::zeros({1, 9}, torch::kLong));
            }).find("9 positions"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              model(torch::full({1, 4}, 50, torch::kLong));
            }).find("vocab_size 50"),
            std::string::npos);
}

TEST(CLIPText, PoolsAtFirstEosForBothConfigRules) {
  auto config = tiny_text_config();
  auto ids = torch::tensor({{48, 3, 7, 49, 49, 49}, {48, 49, 49, 49, 49, 49}}, torch::kLong);
  for (int64_t eos : {2, 49}) {
    config["eos_token_id"] = eos;
    models::CLIPTextModel model(models::CLIPTextConfig::from_json(config));
    torch::NoGradGuard no_grad;
    auto out = model(ids);
    EXPECT_TRUE(out.pooler_output[0].equal(out.last_hidden_state[0][3])) << eos;
    EXPECT_TRUE(out.pooler_output[1].equal(out.last_hidden_state[1][1])) << eos;
  }
}

TEST(CLIPText, RightPaddingMaskLeavesRealTokensUnchanged) {
  models::CLIPTextModel model(models::CLIPTextConfig::from_json(tiny_text_config()));
  torch::NoGradGuard no_grad;
  auto ids = torch::tensor({{48, 3, 7, 49, 49, 49}}, torch::kLong);
  auto mask = torch::tensor({{1, 1, 1, 1, 0, 0}}, torch::kLong);
  auto masked = model(ids, mask).last_hidden_state.slice(1, 0, 4);
  auto plain = model(ids).last_hidden_state.slice(1, 0, 4);
  EXPECT_LT(relative_l2(masked, plain), 1e-6);
}

TEST(CLIPVision, WrongImageSizeIsAnError) {
  models::CLIPVisionConfig config;
  config.encoder = {16, 32, 1, 2, "gelu", 1e-5};
  config.image_size = 16;
  config.patch_size = 8;
  models::CLIPVisionModelWithProjection model(config);
  torch::NoGradGuard no_grad;
  EXPECT_EQ(model(torch::randn({2, 3, 16, 16})).image_embeds.sizes(),
            (std::vector<int64_t>{2, 512}));
  EXPECT_NE(error_of([&] {
              model(torch::randn({1, 3, 24, 24}));
            }).find("expected [batch, 3, 16, 16]"),
            std::string::npos);
}

TEST(Dino, WrongGridIsAnError) {
  models::DinoViT model(models::DinoViTConfig::from_json(
      Json{{"img_size", 16}, {"patch_size", 8}, {"embed_dim", 8}, {"depth", 1}, {"num_heads", 2}}));
  torch::NoGradGuard no_grad;
  EXPECT_EQ(model(torch::randn({2, 3, 16, 16})).sizes(), (std::vector<int64_t>{2, 8}));
  EXPECT_NE(error_of([&] {
              model(torch::randn({1, 3, 24, 16}));
            }).find("interpolation"),
            std::string::npos);
}

TEST(Scores, ClipAndDinoFormulas) {
  auto a = torch::tensor({{3.0, 4.0}, {1.0, 0.0}}, torch::kDouble);
  auto b = torch::tensor({{6.0, 8.0}, {-2.0, 0.0}}, torch::kDouble);
  auto clip = kosmosg::eval::clip_score(a, b);
  EXPECT_NEAR(clip[0].item<double>(), 100.0, 1e-12);
  EXPECT_NEAR(clip[1].item<double>(), -100.0, 1e-12);
  EXPECT_DOUBLE_EQ(kosmosg::eval::score_metric(clip), 0.0);
  EXPECT_DOUBLE_EQ(kosmosg::eval::score_metric(torch::tensor({10.0, 20.0})), 15.0);
  auto dino = kosmosg::eval::dino_score(torch::zeros({1, 4}), torch::ones({1, 4}));
  EXPECT_EQ(dino.item<float>(), 0.0f);
  EXPECT_NEAR(kosmosg::eval::dino_score(a, b)[0].item<double>(), 100.0, 1e-12);
  EXPECT_FALSE(error_of([] {
                 kosmosg::eval::clip_score(torch::ones({2, 3}), torch::ones({3, 3}));
               }).empty());
}
