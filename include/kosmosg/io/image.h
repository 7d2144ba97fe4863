#pragma once
// Images as uint8 [H, W, 3] RGB tensors: reading (OpenCV decoders), Pillow 9.4's exact resampling,
// the Kosmos-G / DreamBench preprocessing transforms, and PNG writing with text chunks.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>

namespace kosmosg::io {

// Pillow's decompression-bomb limit (2 x 89478485 pixels), above which it refuses to open.
constexpr int64_t kMaxImagePixels = 178956970;

// Decodes an image file into uint8 [H, W, 3] RGB: 16-bit samples are divided by 257 (rounded),
// grey is replicated, alpha is composited onto white. Accepts PNG, JPEG, BMP, WebP, TIFF and PNM,
// whose headers are read before decoding. Throws kosmosg::Error naming the file when it is
// missing, not a regular file, larger than 1 GiB, unreadable, corrupt or of another format, or when
// width * height exceeds `max_pixels` (refused from the header, before any decoding).
at::Tensor read_image(const std::string& path, int64_t max_pixels = kMaxImagePixels);
// Width and height of an image file from its header alone (nothing is decoded), with the
// checks of read_image that need no decoding.
std::pair<int64_t, int64_t> read_image_size(const std::string& path, int64_t max_pixels = kMaxImagePixels);
// Decodes the bytes of an image file (PNG, JPEG, ...) as read_image does; `what` names the data in
// errors (e.g. "shard.tsv line 3 column 2").
at::Tensor decode_image(const std::string& bytes, const std::string& what, int64_t max_pixels = kMaxImagePixels);

// Pillow's resampling filters.
enum class Resample { Bilinear, Bicubic, Lanczos };

// Pillow 9.4 Image.resize of a uint8 [H, W, C] image to width x height: separable fixed-point
// convolution, horizontal pass first into a uint8 intermediate, antialiased when downscaling.
at::Tensor resize(const at::Tensor& hwc_u8, int64_t width, int64_t height, Resample filter);
// torchvision Resize(target) on a PIL image: the shorter side becomes `target`, the longer
// int(target * long / short).
at::Tensor resize_shorter_side(const at::Tensor& hwc_u8, int64_t target, Resample filter);
// torchvision CenterCrop(size): offsets round((H - size) / 2), round((W - size) / 2), half to even.
at::Tensor center_crop(const at::Tensor& hwc_u8, int64_t size);

// Kosmos-G's "gpt" transform (CLIP ViT input): bicubic `size` (the ViT's image size, 224 for
// ViT-L/14), centre crop, (x/255 - mean) / std with CLIP's mean/std in float64; float32 [3, size, size].
at::Tensor clip_pixel_values(const at::Tensor& hwc_u8, int64_t size = 224);
// Kosmos-G's "diff" transform (VAE input): bilinear `size`, crop `size`, x/127.5 - 1; float32
// [3, size, size].
at::Tensor vae_pixel_values(const at::Tensor& hwc_u8, int64_t size = 512);
// DreamBench DINO transform: bicubic 256, crop 224, ToTensor + Normalize(ImageNet) in float32.
at::Tensor dino_pixel_values(const at::Tensor& hwc_u8);

// Writes a uint8 [H, W, 3] RGB (or [H, W, 1] grey, [H, W, 4] RGBA) image as PNG, atomically, with
// one text chunk per entry right after IHDR: tEXt when the value is Latin-1, iTXt (UTF-8,
// uncompressed) otherwise. Keywords must be 1-79 printable Latin-1 characters without leading,
// trailing or double spaces.
void write_png(const std::string& path, const at::Tensor& hwc_u8,
               const std::map<std::string, std::string>& text = {});

// The tEXt and uncompressed iTXt chunks of a PNG file, as UTF-8 keyword -> value (compressed
// zTXt/iTXt chunks are skipped). Throws naming the file when it is not a valid PNG.
std::map<std::string, std::string> read_png_text(const std::string& path);

}  // namespace kosmosg::io
