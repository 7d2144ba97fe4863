#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <opencv2/imgcodecs.hpp>

#include "kosmosg/error.h"
#include "kosmosg/io/image.h"
#include "support.h"

namespace fs = std::filesystem;
namespace io = kosmosg::io;

namespace {

using kosmosg::test::temp_dir;
using kosmosg::test::error_of;

std::vector<int> pixel(const at::Tensor& img, int64_t y, int64_t x) {
  auto p = img[y][x];
  return {p[0].item<int>(), p[1].item<int>(), p[2].item<int>()};
}

}  // namespace

TEST(Image, AlphaIsCompositedOnWhite) {
  const auto dir = temp_dir("image", "rgba");
  cv::Mat bgra(1, 3, CV_8UC4);
  bgra.at<cv::Vec4b>(0, 0) = {10, 20, 30, 255};   // opaque: B, G, R = 10, 20, 30
  bgra.at<cv::Vec4b>(0, 1) = {10, 20, 30, 0};     // transparent: white
  bgra.at<cv::Vec4b>(0, 2) = {0, 100, 200, 128};  // half: c*a/255 + 255*(1 - a/255)
  ASSERT_TRUE(cv::imwrite((dir / "a.png").string(), bgra));
  const auto img = io::read_image((dir / "a.png").string());
  ASSERT_EQ(img.sizes(), (at::IntArrayRef{1, 3, 3}));
  EXPECT_EQ(img.scalar_type(), at::kByte);
  EXPECT_EQ(pixel(img, 0, 0), (std::vector<int>{30, 20, 10}));
  EXPECT_EQ(pixel(img, 0, 1), (std::vector<int>{255, 255, 255}));
  auto blend = [](int c) { return (c * 128 + 255 * 127 + 127) / 255; };
  EXPECT_EQ(pixel(img, 0, 2), (std::vector<int>{blend(200), blend(100), blend(0)}));
}

TEST(Image, GreyAndSixteenBitInputs) {
  const auto dir = temp_dir("image", "grey16");
  cv::Mat grey(2, 2, CV_8UC1, cv::Scalar(77));
  ASSERT_TRUE(cv::imwrite((dir / "g.png").string(), grey));
  const auto g = io::read_image((dir / "g.png").string());
  ASSERT_EQ(g.sizes(), (at::IntArrayRef{2, 2, 3}));
  EXPECT_TRUE(g.eq(77).all().item<bool>());

  cv::Mat wide(1, 2, CV_16UC3);
  wide.at<cv::Vec3w>(0, 0) = {65535, 257 * 100 + 128, 0};  // B, G, R
  wide.at<cv::Vec3w>(0, 1) = {257 * 100 + 129, 257, 256};
  ASSERT_TRUE(cv::imwrite((dir / "w.png").string(), wide));
  const auto w = io::read_image((dir / "w.png").string());
  EXPECT_EQ(pixel(w, 0, 0), (std::vector<int>{0, 100, 255}));
  EXPECT_EQ(pixel(w, 0, 1), (std::vector<int>{1, 1, 101}));
}

TEST(Image, MissingCorruptAndOversizedFilesAreErrors) {
  const auto dir = temp_dir("image", "errors");
  const std::string missing = (dir / "missing.png").string();
  std::string e = error_of([&] { io::read_image(missing); });
  EXPECT_NE(e.find(missing), std::string::npos) << e;
  EXPECT_NE(e.find("no such file"), std::string::npos) << e;

  const std::string corrupt = (dir / "corrupt.png").string();
  std::ofstream(corrupt, std::ios::binary) << "\x89PNG\r\n\x1a\nthis is not really a png";
  e = error_of([&] { io::read_image(corrupt); });
  EXPECT_NE(e.find(corrupt), std::string::npos) << e;
  EXPECT_NE(e.find("decod"), std::string::npos) << e;

  const std::string big = (dir / "big.png").string();
  ASSERT_TRUE(cv::imwrite(big, cv::Mat(10, 12, CV_8UC3, cv::Scalar(1, 2, 3))));
  e = error_of([&] { io::read_image(big, 100); });
  EXPECT_NE(e.find(big), std::string::npos) << e;
  EXPECT_NE(e.find("12x10"), std::string::npos) << e;
  EXPECT_EQ(io::read_image(big, 120).size(0), 10);
}

TEST(Image, PngTextChunksRoundTrip) {
  const auto dir = temp_dir("image", "text");
  const auto img = torch::randint(0, 256, {5, 7, 3}, torch::kByte);
  const std::map<std::string, std::string> text = {
      {"prompt", "a photo of <i> on the beach"},
      {"latin", "caf\xC3\xA9"},
      {"unicode", "\xE6\x97\xA5\xE6\x9C\xAC \xE2\x9C\x93"},
      {"multi line", "seed: 42\nsteps: 50"}};
  const std::string path = (dir / "out.png").string();
  io::write_png(path, img, text);
  EXPECT_EQ(io::read_png_text(path), text);
  EXPECT_TRUE(io::read_image(path).equal(img));
  const auto e = error_of([&] { io::write_png((dir / "bad.png").string(), img, {{" lead", "x"}}); });
  EXPECT_NE(e.find("keyword"), std::string::npos) << e;
  EXPECT_FALSE(fs::exists(dir / "bad.png"));
}

TEST(Image, UnwritableFolderLeavesNothing) {
  const auto dir = temp_dir("image", "unwritable");
  const auto img = torch::zeros({2, 2, 3}, torch::kByte);
  const std::string path = (dir / "no_such_folder" / "out.png").string();
  EXPECT_THROW(io::write_png(path, img, {{"k", "v"}}), kosmosg::Error);
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(Image, ResizeAndCropBasics) {
  const auto flat = torch::full({9, 13, 3}, 200, torch::kByte);
  for (auto f : {io::Resample::Bilinear, io::Resample::Bicubic}) {
    EXPECT_TRUE(io::resize(flat, 31, 4, f).eq(200).all().item<bool>());
    EXPECT_TRUE(io::resize(flat, 13, 9, f).equal(flat));
  }
  const auto r = io::resize_shorter_side(torch::zeros({30, 47, 3}, torch::kByte), 20, io::Resample::Bicubic);
  EXPECT_EQ(r.sizes(), (at::IntArrayRef{20, 31, 3}));  // int(20 * 47 / 30) = 31
  // Offsets round half to even: (5 - 2) / 2 = 1.5 -> 2 and (7 - 2) / 2 = 2.5 -> 2.
  const auto ramp = torch::arange(7, torch::kByte).view({1, 7, 1}).expand({7, 7, 3}).contiguous();
  EXPECT_EQ(io::center_crop(ramp.slice(1, 0, 5), 2)[0][0][0].item<int>(), 2);
  EXPECT_EQ(io::center_crop(ramp, 2)[0][0][0].item<int>(), 2);
  EXPECT_NE(error_of([&] { io::center_crop(ramp, 8); }).find("cannot crop"), std::string::npos);
  EXPECT_EQ(io::clip_pixel_values(flat).sizes(), (at::IntArrayRef{3, 224, 224}));
  EXPECT_EQ(io::vae_pixel_values(flat, 64).sizes(), (at::IntArrayRef{3, 64, 64}));
}
