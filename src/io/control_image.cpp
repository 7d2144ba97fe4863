#include "kosmosg/io/control_image.h"

#include <torch/torch.h>

#include <cmath>

#include "kosmosg/error.h"
#include "kosmosg/io/image.h"
#include "kosmosg_features.h"
#if KOSMOSG_HAVE_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace kosmosg::io {
namespace {

const char* const kWhat = "control-preprocess";

void check_rgb_image(const at::Tensor& image, const char* what) {
  if (image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != at::kByte)
    fail(what, "expected a uint8 [H, W, 3] RGB image, got " + c10::str(image.sizes()) + " " +
                   c10::toString(image.scalar_type()));
}

#if KOSMOSG_HAVE_OPENCV
// A cv::Mat over the tensor's memory (kept alive by `image`).
cv::Mat as_mat(const at::Tensor& image) {
  return cv::Mat(static_cast<int>(image.size(0)), static_cast<int>(image.size(1)), CV_8UC3,
                 image.data_ptr<uint8_t>());
}

// A single-channel uint8 map → uint8 [H, W, 3] with the map in every channel.
at::Tensor to_rgb(const cv::Mat& grey) {
  auto out = torch::from_blob(grey.data, {grey.rows, grey.cols, 1}, at::kByte).clone();
  return out.expand({grey.rows, grey.cols, 3}).contiguous();
}
#endif

}  // namespace

std::vector<std::string> control_preprocessors() { return {"none", "canny", "scribble", "lineart"}; }

ControlPreprocess ControlPreprocess::parse(const std::string& text) {
  ControlPreprocess p;
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const auto colon = text.find(':', start);
    parts.push_back(text.substr(start, colon - start));
    if (colon == std::string::npos) break;
    start = colon + 1;
  }
  p.name = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) {
    char* end = nullptr;
    const double v = std::strtod(parts[i].c_str(), &end);
    if (parts[i].empty() || *end != '\0' || !std::isfinite(v))
      fail(kWhat, "'" + text + "': '" + parts[i] + "' is not a number");
    p.values.push_back(v);
  }
  if (p.name == "canny") {
    if (p.values.empty()) p.values = {100, 200};
    if (p.values.size() != 2)
      fail(kWhat, "'" + text + "': canny takes two thresholds, canny:LOW:HIGH (e.g. canny:100:200)");
    if (p.values[0] < 0 || p.values[0] > p.values[1])
      fail(kWhat, "'" + text + "': canny thresholds must satisfy 0 <= LOW <= HIGH");
  } else if (p.name == "scribble") {
    if (p.values.empty()) p.values = {32};
    if (p.values.size() != 1 || p.values[0] < 0 || p.values[0] > 510)
      fail(kWhat, "'" + text + "': scribble takes one threshold in [0, 510], scribble:T (default 32)");
  } else if (p.name == "lineart" || p.name == "none") {
    if (!p.values.empty()) fail(kWhat, "'" + text + "': " + p.name + " takes no settings");
  } else {
    std::string valid;
    for (const auto& n : control_preprocessors()) valid += (valid.empty() ? "" : ", ") + n;
    fail(kWhat, "unknown preprocessor '" + p.name + "' (expected one of " + valid + ")");
  }
  return p;
}

at::Tensor canny_edges(const at::Tensor& hwc_u8, double low_threshold, double high_threshold) {
  check_rgb_image(hwc_u8, "canny");
  if (low_threshold < 0 || low_threshold > high_threshold)
    fail("canny", "thresholds " + std::to_string(low_threshold) + " and " +
                      std::to_string(high_threshold) + " must satisfy 0 <= low <= high");
#if !KOSMOSG_HAVE_OPENCV
  kosmosg::detail::fail_without_opencv("canny");
#else
  const auto image = hwc_u8.contiguous();
  cv::Mat edges;
  cv::Canny(as_mat(image), edges, low_threshold, high_threshold);
  return to_rgb(edges);
#endif
}

at::Tensor scribble_edges(const at::Tensor& hwc_u8, double threshold) {
  check_rgb_image(hwc_u8, "scribble");
#if !KOSMOSG_HAVE_OPENCV
  kosmosg::detail::fail_without_opencv("scribble");
#else
  const auto image = hwc_u8.contiguous();
  cv::Mat x, fine, coarse;
  as_mat(image).convertTo(x, CV_32FC3);
  cv::GaussianBlur(x, fine, cv::Size(0, 0), 0.5);
  cv::GaussianBlur(x, coarse, cv::Size(0, 0), 5.0);
  // The darkest channel of the difference decides: strokes are where the fine image is darker.
  cv::Mat difference = coarse - fine;
  auto dog = torch::from_blob(difference.data, {x.rows, x.cols, 3}, at::kFloat).amin(2);
  auto strokes = (2 * dog.clamp(0, 255)) > threshold;
  return (strokes.to(at::kByte) * 255).unsqueeze(2).expand({x.rows, x.cols, 3}).contiguous();
#endif
}

at::Tensor lineart_edges(const at::Tensor& hwc_u8) {
  check_rgb_image(hwc_u8, "lineart");
#if !KOSMOSG_HAVE_OPENCV
  kosmosg::detail::fail_without_opencv("lineart");
#else
  const auto image = hwc_u8.contiguous();
  cv::Mat x, blurred;
  as_mat(image).convertTo(x, CV_32FC3);
  cv::GaussianBlur(x, blurred, cv::Size(0, 0), 6.0);
  cv::Mat difference = blurred - x;
  auto darker = torch::from_blob(difference.data, {x.rows, x.cols, 3}, at::kFloat).amin(2).clamp(0, 255);
  const auto lines = darker.masked_select(darker > 8);
  const double median = lines.numel() > 0 ? lines.median().item<double>() : 0.0;
  auto out = (darker / std::max(16.0, median) * 127).clamp(0, 255).to(at::kByte);
  return out.unsqueeze(2).expand({x.rows, x.cols, 3}).contiguous();
#endif
}

at::Tensor preprocess_control_image(const at::Tensor& hwc_u8, const ControlPreprocess& preprocess) {
  // Settings left empty take the defaults parse gives them (and an unknown name its error).
  const auto p = preprocess.values.empty() ? ControlPreprocess::parse(preprocess.name) : preprocess;
  if (p.name == "canny") return canny_edges(hwc_u8, p.values.at(0), p.values.at(1));
  if (p.name == "scribble") return scribble_edges(hwc_u8, p.values.at(0));
  if (p.name == "lineart") return lineart_edges(hwc_u8);
  check_rgb_image(hwc_u8, kWhat);
  return hwc_u8;
}

at::Tensor control_pixel_values(const at::Tensor& hwc_u8, int64_t width, int64_t height) {
  check_rgb_image(hwc_u8, "control image");
  if (width <= 0 || height <= 0)
    fail("control image", "size " + std::to_string(width) + "x" + std::to_string(height) + " must be positive");
  auto image = hwc_u8;
  if (image.size(1) != width || image.size(0) != height) image = resize(image, width, height, Resample::Lanczos);
  return image.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat).div(255.0).contiguous();
}

}  // namespace kosmosg::io
