#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "kosmosg/error.h"
#include "kosmosg/io/control_image.h"
#include "kosmosg/io/image.h"
#include "kosmosg/models/controlnet.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;
using namespace kosmosg;

using test::expect_error;

class ControlNet : public ::testing::Test {
 protected:
  void SetUp() override {
    KOSMOSG_REQUIRE_SHARED_DATA();
    work = fs::temp_directory_path() / ("kosmosg_controlnet_" + std::to_string(::getpid()));
    fs::remove_all(work);
    dir = test::write_tiny_controlnet((work / "controlnet").string());
  }
  void TearDown() override { fs::remove_all(work); }
  static io::SafeTensors golden() {
    return io::SafeTensors::open(test::shared_dir() + "/golden/diffusers/controlnet_sd15_tiny.safetensors");
  }

  fs::path work;
  std::string dir;
};

TEST_F(ControlNet, FolderReproducesTheGoldenResidualsAndScaleZeroGivesZeros) {
  auto model = models::load_controlnet(dir);
  const auto g = golden();
  torch::NoGradGuard no_grad;
  auto run = [&](double scale) {
    return model->forward(g.get("input.sample"), g.get("input.timestep"), g.get("input.encoder_hidden_states"),
                          g.get("input.controlnet_cond"), scale);
  };
  const auto r = run(g.get("input.conditioning_scale").item<double>());
  ASSERT_EQ(r.down.size(), 12u);
  for (size_t i = 0; i < r.down.size(); ++i) {
    const auto expected = g.get("output.down_block_res_samples." + std::to_string(i));
    EXPECT_LT(((r.down[i] - expected).norm() / expected.norm()).item<double>(), 1e-4) << i;
  }
  const auto zero = run(0.0);
  for (const auto& d : zero.down) EXPECT_EQ(d.abs().max().item<double>(), 0.0);
  EXPECT_EQ(zero.mid.abs().max().item<double>(), 0.0);
}

TEST_F(ControlNet, WrongFoldersAndShapesAreClearErrors) {
  const auto fixture = test::shared_dir() + "/fixtures/tiny-sd15";
  expect_error([&] { models::load_controlnet((work / "missing").string()); }, {"missing", "not a folder"});
  expect_error([&] { models::load_controlnet(fixture + "/unet"); }, {"unet", "UNet2DConditionModel", "not a ControlNetModel"});
  expect_error([&] { models::load_controlnet(fixture); }, {"tiny-sd15", "whole pipeline"});
  fs::remove(work / "controlnet" / "config.json");
  expect_error([&] { models::load_controlnet(dir); }, {"no config.json"});

  // Weights that do not fit the config (a width changed) name the folder and the tensor.
  const auto bad = test::write_tiny_controlnet((work / "bad").string());
  auto weights = io::SafeTensors::open(bad + "/diffusion_pytorch_model.safetensors").tensors();
  weights["controlnet_mid_block.weight"] = torch::zeros({32, 16, 1, 1});
  io::save_safetensors(bad + "/diffusion_pytorch_model.safetensors", weights);
  expect_error([&] { models::load_controlnet(bad); }, {"bad", "controlnet_mid_block.weight"});

  auto model = models::load_controlnet(test::write_tiny_controlnet((work / "good").string()));
  torch::NoGradGuard no_grad;
  expect_error([&] { model->forward(torch::zeros({1, 4, 8, 8}), torch::tensor({10}), torch::zeros({1, 7, 32}), torch::zeros({1, 3, 32, 32})); },
               {"control image", "[1, 3, 64, 64]"});

  // A ControlNet for another UNet (the micro one, half as wide) does not fit.
  const auto micro = io::SafeTensors::open(test::shared_dir() + "/golden/diffusers/unet_sd15_micro_ctx19.safetensors");
  const auto unet = models::UNet2DConditionConfig::from_json(io::parse_json(micro.metadata().at("config"), "config"));
  expect_error([&] { models::check_controlnet_fits(model->config(), unet, "cn"); }, {"cn", "block_out_channels"});
}

// A 64×48 picture: dark background, a bright square from (16, 12) to (40, 36).
at::Tensor square() {
  auto img = torch::full({48, 64, 3}, 30, at::kByte);
  img.slice(0, 12, 36).slice(1, 16, 40).fill_(220);
  return img;
}

TEST(ControlImage, CannyFindsTheSquareBorderAndThresholdsMatter) {
  const auto edges = io::canny_edges(square());
  ASSERT_EQ(edges.sizes(), (std::vector<int64_t>{48, 64, 3}));
  ASSERT_EQ(edges.scalar_type(), at::kByte);
  EXPECT_TRUE(torch::equal(edges.select(2, 0), edges.select(2, 2)));
  const auto e = edges.select(2, 0);
  EXPECT_EQ(e.slice(0, 0, 8).max().item<int>(), 0) << "edges in a flat area";
  EXPECT_EQ(e.slice(0, 18, 30).slice(1, 22, 34).max().item<int>(), 0) << "edges inside the square";
  EXPECT_GT(e.slice(0, 10, 38).slice(1, 14, 18).sum().item<int64_t>(), 0) << "no edge on the left border";
  EXPECT_EQ(io::canny_edges(square(), 2000, 3000).max().item<int>(), 0) << "thresholds above the gradient";
  expect_error([] { io::canny_edges(square(), 200, 100); }, {"low <= high"});
}

TEST(ControlImage, ScribbleAndLineartTraceDarkLinesOnLightPaper) {
  auto drawing = torch::full({48, 64, 3}, 220, at::kByte);
  drawing.slice(1, 30, 32).fill_(30);
  for (const auto& name : {"scribble", "lineart"}) {
    SCOPED_TRACE(name);
    const auto map = io::preprocess_control_image(drawing, io::ControlPreprocess::parse(name));
    ASSERT_EQ(map.sizes(), (std::vector<int64_t>{48, 64, 3}));
    EXPECT_EQ(map.slice(1, 0, 20).max().item<int>(), 0) << "marks on blank paper";
    // Scribble strokes are 255; line art puts a typical line at 127.
    EXPECT_GE(map.slice(1, 30, 32).min().item<int>(), 127) << "the line is not traced";
  }
}

TEST(ControlImage, PreprocessorSpecsParseOrFailClearly) {
  auto canny = io::ControlPreprocess::parse("canny:50:150");
  EXPECT_EQ(canny.values, (std::vector<double>{50, 150}));
  EXPECT_EQ(io::ControlPreprocess::parse("canny").values, (std::vector<double>{100, 200}));
  // A faint step (15 grey levels) is an edge at low thresholds only.
  auto faint = square();
  faint.slice(0, 40, 48).fill_(45);
  const auto low = io::preprocess_control_image(faint, io::ControlPreprocess::parse("canny:10:20"));
  const auto high = io::preprocess_control_image(faint, io::ControlPreprocess::parse("canny"));
  EXPECT_GT(low.slice(0, 38, 42).max().item<int>(), 0);
  EXPECT_EQ(high.slice(0, 38, 42).max().item<int>(), 0);
  EXPECT_TRUE(torch::equal(io::preprocess_control_image(square(), io::ControlPreprocess::parse("none")), square()));
  expect_error([] { io::ControlPreprocess::parse("depth"); }, {"depth", "canny", "scribble", "lineart"});
  expect_error([] { io::ControlPreprocess::parse("canny:100"); }, {"canny:LOW:HIGH"});
  expect_error([] { io::ControlPreprocess::parse("canny:x:200"); }, {"'x' is not a number"});
  expect_error([] { io::ControlPreprocess::parse("canny:300:200"); }, {"LOW <= HIGH"});
  expect_error([] { io::ControlPreprocess::parse("lineart:3"); }, {"takes no settings"});
}

TEST(ControlImage, PixelValuesAreInZeroOneAtTheRequestedSize) {
  const auto v = io::control_pixel_values(square(), 32, 24);
  ASSERT_EQ(v.sizes(), (std::vector<int64_t>{1, 3, 24, 32}));
  EXPECT_GE(v.min().item<double>(), 0.0);
  EXPECT_LE(v.max().item<double>(), 1.0);
  const auto same = io::control_pixel_values(square(), 64, 48);
  EXPECT_TRUE(torch::equal(same, square().permute({2, 0, 1}).unsqueeze(0).to(at::kFloat) / 255.0));
  // Lanczos keeps a flat picture flat.
  const auto flat = io::resize(torch::full({40, 40, 3}, 77, at::kByte), 23, 57, io::Resample::Lanczos);
  EXPECT_EQ(flat.min().item<int>(), 77);
  EXPECT_EQ(flat.max().item<int>(), 77);
}

TEST(ControlImage, LanczosMatchesPillow) {
  // Pillow 9.4.0: Image.fromarray(a).resize((13, 4), Image.LANCZOS) with
  // a[i, j, c] = (37i + 91j + 53c + 29ij) % 256 on a 7×9 RGB image (width up, height down).
  auto a = torch::empty({7, 9, 3}, at::kByte);
  for (int64_t i = 0; i < 7; ++i)
    for (int64_t j = 0; j < 9; ++j)
      for (int64_t c = 0; c < 3; ++c) a[i][j][c] = static_cast<uint8_t>((37 * i + 91 * j + 53 * c + 29 * i * j) % 256);
  const std::vector<int64_t> pillow{
      6,   58,  119, 75,  120, 116, 144, 193, 95,  105, 178, 82,  76,  140, 140, 57,  103, 182, 66,  117,
      160, 133, 219, 146, 159, 169, 120, 127, 63,  135, 107, 161, 226, 168, 109, 158, 227, 4,   55,  68,
      132, 206, 119, 94,  125, 165, 57,  70,  130, 81,  146, 90,  111, 200, 78,  145, 139, 89,  150, 59,
      94,  84,  141, 167, 121, 109, 209, 211, 32,  99,  178, 170, 163, 82,  166, 255, 33,  80,  152, 220,
      212, 105, 192, 188, 79,  133, 151, 117, 99,  146, 75,  118, 166, 68,  105, 171, 157, 66,  127, 191,
      116, 62,  161, 175, 78,  103, 175, 157, 65,  135, 177, 68,  82,  142, 78,  61,  112, 207, 119, 54,
      212, 119, 37,  205, 120, 74,  187, 120, 167, 189, 106, 168, 154, 96,  145, 56,  99,  150, 36,  108,
      150, 37,  102, 157, 38,  87,  160, 39,  88,  146, 25,  87,  138, 17,  86,  140};
  const auto expected = torch::tensor(pillow).to(at::kByte).view({4, 13, 3});
  EXPECT_TRUE(torch::equal(io::resize(a, 13, 4, io::Resample::Lanczos), expected));
}

}  // namespace
