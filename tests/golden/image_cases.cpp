// pre_* cases: the Kosmos-G / DreamBench image transforms on the PNG stored beside each case.
#include <filesystem>

#include "harness.h"
#include "kosmosg/io/image.h"
#include "kosmosg/runtime.h"

namespace {

using namespace kosmosg::golden;
using kosmosg::io::Resample;

void run_preprocess(const Case& c, Report& report, const std::string& kind) {
  if (!kosmosg::has_opencv()) return report.skip("this build reads no images (KOSMOSG_WITH_OPENCV=OFF)");
  const std::string png = std::filesystem::path(c.path).replace_extension(".png").string();
  const at::Tensor img = kosmosg::io::read_image(png);
  // The transforms run on the host before any model: they are compared on the CPU whatever the placement.
  const at::Tensor stored = c.file.get("input.image_uint8");
  if (!img.sizes().equals(stored.sizes()) || !img.equal(stored))
    report.fail("input.image_uint8", "read_image(" + png + ") differs from the stored pixels");
  const int64_t size = c.config.at("resize").get<int64_t>();
  const int64_t crop = c.config.at("center_crop").get<int64_t>();
  const Resample filter = kind == "diff" ? Resample::Bilinear : Resample::Bicubic;
  const at::Tensor resized = kosmosg::io::resize_shorter_side(img, size, filter);
  const at::Tensor cropped = kosmosg::io::center_crop(resized, crop);
  report.check(c, "resized_uint8", resized);
  report.check(c, "cropped_uint8", cropped);
  if (kind == "gpt") report.check(c, "pixel_values", kosmosg::io::clip_pixel_values(img));
  if (kind == "dino") report.check(c, "pixel_values", kosmosg::io::dino_pixel_values(img));
  if (kind == "diff") {
    // No pixel_values are stored: they are cropped_uint8 / 127.5 - 1 exactly.
    const at::Tensor expected = (c.expected("cropped_uint8").permute({2, 0, 1}).to(at::kDouble) / 127.5 - 1).to(at::kFloat);
    if (!kosmosg::io::vae_pixel_values(img, size).equal(expected))
      report.fail("vae_pixel_values", "differ from cropped_uint8 / 127.5 - 1");
  }
}

KOSMOSG_GOLDEN_MODULE("ImagePreprocess/gpt", [](const Case& c, Report& r) { run_preprocess(c, r, "gpt"); });
KOSMOSG_GOLDEN_MODULE("ImagePreprocess/diff", [](const Case& c, Report& r) { run_preprocess(c, r, "diff"); });
KOSMOSG_GOLDEN_MODULE("ImagePreprocess/dino", [](const Case& c, Report& r) { run_preprocess(c, r, "dino"); });

}  // namespace
