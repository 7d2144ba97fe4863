#include <gtest/gtest.h>

#include "support.h"
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/pipeline/convert.h"
#include "kosmosg/pipeline/kosmosg.h"
#include "kosmosg/pipeline/pipeline.h"
#include "kosmosg/text/prompt_layout.h"

namespace {

using kosmosg::test::relative_l2;
using kosmosg::test::official_fixture;

namespace fs = std::filesystem;

using kosmosg::test::shared_dir;

// The official fixture converted once for all tests of this file.
class KosmosGFixture : public ::testing::Test {
 protected:
  void SetUp() override { KOSMOSG_REQUIRE_SHARED_DATA(); }
  static void SetUpTestSuite() {
    KOSMOSG_REQUIRE_SHARED_DATA();
    dir_ = fs::temp_directory_path() / ("kosmosg_pipe_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    kosmosg::pipeline::ConvertOptions options;
    options.checkpoint = (official_fixture() / "checkpoint_tiny.pt").string();
    options.out_dir = (dir_ / "model").string();
    options.sizes_file = (official_fixture() / "sizes.json").string();
    report_ = kosmosg::pipeline::convert_checkpoint(options);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static fs::path dir_;
  static kosmosg::pipeline::ConvertReport report_;
};

fs::path KosmosGFixture::dir_;
kosmosg::pipeline::ConvertReport KosmosGFixture::report_;

}  // namespace

TEST_F(KosmosGFixture, ConvertsTheOfficialCheckpoint) {
  EXPECT_EQ(report_.stage, "final");
  EXPECT_GT(report_.unet_tensors, 0u);
  EXPECT_GT(report_.vae_tensors, 0u);
  for (const char* file : {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                           "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                           "scheduler/scheduler_config.json", "kosmosg/config.json", "kosmosg/model.safetensors",
                           "kosmosg/sentencepiece.bpe.model", "kosmosg/dict.txt"})
    EXPECT_TRUE(fs::exists(dir_ / "model" / file)) << file;
  auto weights = kosmosg::io::SafeTensors::open((dir_ / "model" / "kosmosg" / "model.safetensors").string());
  EXPECT_FALSE(weights.contains("gpt_model.decoder.output_projection.weight"));  // tied, stored once
  EXPECT_EQ(weights.info("gpt_model.decoder.embed_tokens.weight").dtype, "F16");
}

// encode_condition and the sampling run reproduce what the official code computes from the same
// checkpoint, prompts and images.
TEST_F(KosmosGFixture, MatchesTheOfficialOutputs) {
  auto expected = kosmosg::io::SafeTensors::open((official_fixture() / "expected.safetensors").string());
  const auto prompts = kosmosg::io::parse_json(expected.metadata().at("prompts"), "prompts");
  const auto image_files = kosmosg::io::parse_json(expected.metadata().at("images"), "images");
  auto encoder = kosmosg::pipeline::KosmosGConditionEncoder::from_folder((dir_ / "model").string());
  auto pipe = kosmosg::pipeline::Pipeline::from_folder((dir_ / "model").string());
  const int64_t image_size = encoder->model()->config().vision.image_size;
  size_t next_image = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string key = std::to_string(i);
    const std::string prompt = prompts[i][0], negative = prompts[i][1];
    const auto layout = kosmosg::text::layout_prompt(encoder->tokenizer(), prompt,
                                                     encoder->model()->config().connector.latent_query_num);
    EXPECT_TRUE(torch::equal(at::tensor(layout.tokens).unsqueeze(0), expected.get("input." + key + ".src_tokens")));
    std::vector<at::Tensor> images;
    std::vector<at::Tensor> pixels;
    for (size_t k = 0; k < layout.num_images; ++k) {
      images.push_back(kosmosg::io::read_image((official_fixture() / image_files[next_image++].get<std::string>()).string()));
      pixels.push_back(kosmosg::io::clip_pixel_values(images.back(), image_size));
    }
    // The official app casts the pixels to float16 before the model sees them.
    EXPECT_TRUE(torch::equal(at::stack(pixels).to(at::kHalf).to(at::kFloat), expected.get("input." + key + ".pixel_values")));

    auto condition = encoder->encode(prompt, images, negative, /*guided=*/true).batch();
    EXPECT_LT(relative_l2(condition, expected.get("output." + key + ".condition")), 1e-3) << prompt;

    kosmosg::pipeline::GenerateOptions options;
    options.prompt = prompt;
    options.images = images;
    options.negative = negative;
    options.sampling.steps = std::stoll(expected.metadata().at("num_inference_steps"));
    options.sampling.guidance = std::stod(expected.metadata().at("guidance_scale"));
    options.width = std::stoll(expected.metadata().at("width"));
    options.height = std::stoll(expected.metadata().at("height"));
    options.initial_latents = expected.get("input." + key + ".initial_latents");
    auto [latents, image] = pipe.generate(options);
    EXPECT_LT(relative_l2(latents, expected.get("output." + key + ".final_latents")), 1e-2) << prompt;
    EXPECT_LT(relative_l2((image / 2 + 0.5).clamp(0, 1), expected.get("output." + key + ".image_01")), 1e-2) << prompt;
  }
}

// Blocks stored in bfloat16 and computed in float32: the official outputs within bfloat16's weight
// rounding, and the blocks stay in bfloat16 after a generation.
TEST_F(KosmosGFixture, BlocksStoredInBfloat16StayCloseToTheOfficialOutputs) {
  auto expected = kosmosg::io::SafeTensors::open((official_fixture() / "expected.safetensors").string());
  const auto prompts = kosmosg::io::parse_json(expected.metadata().at("prompts"), "prompts");
  const auto image_files = kosmosg::io::parse_json(expected.metadata().at("images"), "images");
  auto pipe = kosmosg::pipeline::Pipeline::from_folder((dir_ / "model").string(), at::kBFloat16);
  auto& model = dynamic_cast<kosmosg::pipeline::KosmosGConditionEncoder&>(pipe.encoder()).model();
  const std::string prompt = prompts[0][0];
  kosmosg::pipeline::GenerateOptions options;
  options.prompt = prompt;
  const auto layout = kosmosg::text::layout_prompt(
      kosmosg::text::KosmosGTokenizer::from_files((dir_ / "model" / "kosmosg" / "sentencepiece.bpe.model").string(),
                                                  (dir_ / "model" / "kosmosg" / "dict.txt").string()),
      prompt, model->config().connector.latent_query_num);
  for (size_t k = 0; k < layout.num_images; ++k)
    options.images.push_back(kosmosg::io::read_image((official_fixture() / image_files[k].get<std::string>()).string()));
  options.negative = prompts[0][1];
  options.sampling.steps = std::stoll(expected.metadata().at("num_inference_steps"));
  options.sampling.guidance = std::stod(expected.metadata().at("guidance_scale"));
  options.width = std::stoll(expected.metadata().at("width"));
  options.height = std::stoll(expected.metadata().at("height"));
  options.initial_latents = expected.get("input.0.initial_latents");
  auto [latents, image] = pipe.generate(options);
  const double error = relative_l2(latents, expected.get("output.0.final_latents"));
  EXPECT_LT(error, 5e-2) << prompt;
  EXPECT_GT(error, 0) << "the weights were not rounded: nothing was stored in bfloat16";
  EXPECT_EQ(model->gpt_model->decoder->layers->ptr(0)->parameters().front().scalar_type(), at::kBFloat16);
  EXPECT_EQ(pipe.decoder().unet()->up_blocks->ptr(0)->parameters().front().scalar_type(), at::kBFloat16);
  EXPECT_EQ(pipe.decoder().unet()->conv_in->parameters().front().scalar_type(), at::kFloat);
}

TEST_F(KosmosGFixture, PlaceholderCountMustMatchTheImages) {
  auto encoder = kosmosg::pipeline::KosmosGConditionEncoder::from_folder((dir_ / "model").string());
  auto image = kosmosg::io::read_image((official_fixture() / "image_0_0.png").string());
  try {
    encoder->encode("<i> next to <i>", {image}, "", true);
    FAIL() << "expected an error";
  } catch (const kosmosg::Error& e) {
    EXPECT_NE(std::string(e.what()).find("2 <i> placeholders but 1 image"), std::string::npos) << e.what();
  }
}

TEST_F(KosmosGFixture, RefusesANonEmptyOutputFolderAndNonCheckpoints) {
  kosmosg::pipeline::ConvertOptions options;
  options.checkpoint = (official_fixture() / "checkpoint_tiny.pt").string();
  options.out_dir = (dir_ / "model").string();
  EXPECT_THROW(kosmosg::pipeline::convert_checkpoint(options), kosmosg::Error);

  options.checkpoint = (official_fixture() / "expected.safetensors").string();
  options.out_dir = (dir_ / "not_converted").string();
  options.tokenizer_dir = official_fixture().string();
  EXPECT_THROW(kosmosg::pipeline::convert_checkpoint(options), kosmosg::Error);
  EXPECT_FALSE(fs::exists(dir_ / "not_converted"));
}
