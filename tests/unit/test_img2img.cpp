#include <gtest/gtest.h>
#include <torch/torch.h>

#include "kosmosg/diffusion/scheduler.h"
#include "kosmosg/error.h"
#include "kosmosg/io/control_image.h"
#include "kosmosg/io/image.h"
#include "kosmosg/pipeline/pipeline.h"
#include "support.h"

namespace {

using namespace kosmosg;

class ImageToImage : public ::testing::Test {
 protected:
  void SetUp() override { KOSMOSG_REQUIRE_SHARED_DATA(); }
  static void SetUpTestSuite() {
    KOSMOSG_REQUIRE_SHARED_DATA();
    pipe_ = new pipeline::Pipeline(
        pipeline::Pipeline::from_folder(test::shared_dir() + "/fixtures/tiny-sd15"));
    picture_ = new at::Tensor(
        io::read_image(test::shared_dir() + "/fixtures/kosmosg-official-tiny/image_0_0.png"));
  }
  static void TearDownTestSuite() {
    delete pipe_;
    delete picture_;
  }
  static pipeline::GenerateOptions options(const std::string& sampler) {
    pipeline::GenerateOptions o;
    o.prompt = "a photo of a cat";
    o.sampling.sampler = sampler;
    o.sampling.steps = 6;
    o.width = o.height = 64;
    o.seed = 7;
    return o;
  }
  static at::Tensor image(const pipeline::GenerateOptions& o) { return pipe_->generate(o).second; }

  static pipeline::Pipeline* pipe_;
  static at::Tensor* picture_;
};

pipeline::Pipeline* ImageToImage::pipe_ = nullptr;
at::Tensor* ImageToImage::picture_ = nullptr;

TEST_F(ImageToImage, EverySamplerStartsFromThePictureAndStrengthOneIsTextToImage) {
  for (const auto& sampler : diffusion::scheduler_kinds()) {
    SCOPED_TRACE(sampler);
    auto o = options(sampler);
    const auto txt2img = image(o);
    o.init_image = *picture_;
    o.strength = 1.0;
    EXPECT_TRUE(torch::equal(image(o), txt2img));
    o.strength = 0.5;
    const auto half = image(o);
    EXPECT_TRUE(torch::isfinite(half).all().item<bool>());
    EXPECT_GT((half - txt2img).abs().max().item<double>(), 1e-3);
    EXPECT_TRUE(torch::equal(image(o), half)) << "not reproducible by seed";
    o.seed = 8;
    EXPECT_FALSE(torch::equal(image(o), half)) << "the seed does not reach the noise";
    o.seed = 7;
    o.init_image = torch::flip(*picture_, {1});
    EXPECT_FALSE(torch::equal(image(o), half)) << "the picture does not reach the latents";
  }
}

TEST_F(ImageToImage, LowerStrengthStaysCloserToThePicture) {
  // With random tiny weights "closer" is measured in latents: fewer steps move them less.
  auto o = options("ddim");
  o.init_image = *picture_;
  torch::NoGradGuard no_grad;
  auto pixels = io::control_pixel_values(*picture_, 64, 64) * 2 - 1;
  const auto mean = pipe_->decoder().vae()->encode(pixels).mean * pipe_->decoder().vae()->config().scaling_factor;
  double previous = 0;
  for (double strength : {0.2, 0.5, 0.9}) {
    o.strength = strength;
    const auto latents = pipe_->generate(o).first;
    const double distance = (latents - mean).norm().item<double>();
    EXPECT_GT(distance, previous) << "strength " << strength;
    previous = distance;
  }
}

TEST_F(ImageToImage, BadStrengthsAreErrors) {
  auto o = options("dpmpp-2m");
  o.init_image = *picture_;
  for (double bad : {0.0, -0.5, 1.5}) {
    o.strength = bad;
    EXPECT_THROW(image(o), Error) << bad;
  }
  o.strength = 0.1;  // int(6 · 0.1) = 0 steps left
  try {
    image(o);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("leaves no step"), std::string::npos) << e.what();
  }
  o.strength = 0.5;
  o.init_image = torch::zeros({8, 8}, at::kByte);
  EXPECT_THROW(image(o), Error);
}

}  // namespace
