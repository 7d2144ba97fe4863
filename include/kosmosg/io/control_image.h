#pragma once
// Control images for ControlNet: the built-in preprocessors that need no model (edge maps made
// with OpenCV) and the ControlNet input tensor. Images are uint8 [H, W, 3] RGB as in image.h.
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace kosmosg::io {

// A preprocessor and its settings, as written on the command line: "none", "canny[:LOW:HIGH]"
// (default 100:200), "scribble[:THRESHOLD]" (default 32) or "lineart".
struct ControlPreprocess {
  std::string name = "none";
  std::vector<double> values;  // the numbers after the name, checked by parse
  // Parses `text`; unknown names, malformed or out-of-range numbers are errors naming them.
  static ControlPreprocess parse(const std::string& text);
};

// The preprocessor names `ControlPreprocess::parse` accepts.
std::vector<std::string> control_preprocessors();

// Canny edges as controlnet_aux's CannyDetector makes them: cv::Canny on the RGB image (the
// strongest channel gradient counts) with hysteresis thresholds low <= high; white on black.
at::Tensor canny_edges(const at::Tensor& hwc_u8, double low_threshold = 100, double high_threshold = 200);
// Scribble-like strokes without a model (the "scribble_xdog" preprocessor): a difference of
// Gaussians (σ 0.5 and 5), white where it exceeds `threshold`/2 grey levels.
at::Tensor scribble_edges(const at::Tensor& hwc_u8, double threshold = 32);
// Line art from a drawing or photo without a model (the "lineart_standard" preprocessor): how
// much darker each pixel is than its σ-6 blur, normalised by the median of the lines.
at::Tensor lineart_edges(const at::Tensor& hwc_u8);

// Applies `preprocess` ("none" returns the image unchanged).
at::Tensor preprocess_control_image(const at::Tensor& hwc_u8, const ControlPreprocess& preprocess);

// ControlNet input as diffusers' VaeImageProcessor makes it: Lanczos-resized to width×height when
// the size differs, float32 [1, 3, height, width] in [0, 1].
at::Tensor control_pixel_values(const at::Tensor& hwc_u8, int64_t width, int64_t height);

}  // namespace kosmosg::io
