#include "kosmosg/io/image.h"

#include <ATen/Parallel.h>

#include <array>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>
#include <sstream>

#include "kosmosg/error.h"
#include "kosmosg/io/file.h"
#include "kosmosg_features.h"
#if KOSMOSG_HAVE_OPENCV
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif
#include "kosmosg/io/safetensors.h"
#include "text/unicode.h"

// The resampling weights must be computed exactly as Pillow's C code does, without fused
// multiply-adds, for the fixed-point results to match bit for bit.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace kosmosg::io {
namespace {

constexpr const char* kRead = "image";
constexpr const char* kResize = "resize";
constexpr const char* kPng = "png";
// The largest image file read: a BMP at the pixel limit is 537 MB.
constexpr uint64_t kMaxImageFileBytes = 1ull << 30;

std::string dims(int64_t w, int64_t h) { return std::to_string(w) + "x" + std::to_string(h); }

uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}
uint32_t le32(const unsigned char* p) {
  return (uint32_t(p[3]) << 24) | (uint32_t(p[2]) << 16) | (uint32_t(p[1]) << 8) | p[0];
}
uint32_t le16(const unsigned char* p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 8); }

using Size = std::pair<int64_t, int64_t>;

// JPEG: the first frame header (SOF) before the scan; bytes between markers are skipped as
// libjpeg skips them.
std::optional<Size> jpeg_size(const unsigned char* b, size_t n) {
  for (size_t i = 2; i + 9 < n;) {
    if (b[i] != 0xFF || b[i + 1] == 0xFF) {
      ++i;
      continue;
    }
    const unsigned char marker = b[i + 1];
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) {  // no length field
      i += 2;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return std::nullopt;  // scan or end before a frame
    const size_t len = (size_t(b[i + 2]) << 8) | b[i + 3];
    const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (sof) return Size{(int64_t(b[i + 7]) << 8) | b[i + 8], (int64_t(b[i + 5]) << 8) | b[i + 6]};
    i += 2 + len;
  }
  return std::nullopt;
}

// WebP: the VP8 (lossy), VP8L (lossless) or VP8X (extended) chunk after the RIFF header.
std::optional<Size> webp_size(const unsigned char* b, size_t n) {
  if (n >= 30 && std::memcmp(b + 12, "VP8 ", 4) == 0 && b[23] == 0x9D && b[24] == 0x01 && b[25] == 0x2A)
    return Size{le16(b + 26) & 0x3FFF, le16(b + 28) & 0x3FFF};
  if (n >= 25 && std::memcmp(b + 12, "VP8L", 4) == 0 && b[20] == 0x2F) {
    const uint32_t bits = le32(b + 21);
    return Size{(bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1};
  }
  if (n >= 30 && std::memcmp(b + 12, "VP8X", 4) == 0) {
    const auto w = int64_t(b[24]) | (int64_t(b[25]) << 8) | (int64_t(b[26]) << 16);
    const auto h = int64_t(b[27]) | (int64_t(b[28]) << 8) | (int64_t(b[29]) << 16);
    return Size{w + 1, h + 1};
  }
  return std::nullopt;
}

// TIFF: ImageWidth (256) and ImageLength (257) of the first image file directory.
std::optional<Size> tiff_size(const unsigned char* b, size_t n) {
  const bool little = b[0] == 'I';
  auto u16 = [&](size_t at) { return little ? le16(b + at) : (uint32_t(b[at]) << 8) | b[at + 1]; };
  auto u32 = [&](size_t at) { return little ? le32(b + at) : be32(b + at); };
  const size_t ifd = u32(4);
  if (ifd > n || n - ifd < 2) return std::nullopt;
  const size_t count = u16(ifd);
  int64_t w = -1, h = -1;
  for (size_t k = 0; k < count && ifd + 2 + 12 * (k + 1) <= n; ++k) {
    const size_t e = ifd + 2 + 12 * k;
    const uint32_t tag = u16(e), type = u16(e + 2);
    const int64_t value = type == 3 ? int64_t(u16(e + 8)) : type == 4 ? int64_t(u32(e + 8)) : -1;
    if (tag == 256) w = value;
    if (tag == 257) h = value;
  }
  if (w < 0 || h < 0) return std::nullopt;
  return Size{w, h};
}

// PNM (P1-P6): whitespace-separated ASCII width and height after the magic, '#' comments between.
// PAM (P7): WIDTH and HEIGHT lines.
std::optional<Size> pnm_size(const unsigned char* b, size_t n) {
  size_t i = 2;
  auto number = [&]() -> int64_t {
    while (i < n && (std::isspace(b[i]) || b[i] == '#')) {
      if (b[i] == '#')
        while (i < n && b[i] != '\n') ++i;
      else
        ++i;
    }
    int64_t v = -1;
    while (i < n && std::isdigit(b[i]) && v < (int64_t(1) << 40)) v = (v < 0 ? 0 : v * 10) + (b[i++] - '0');
    return v;
  };
  int64_t w = -1, h = -1;
  if (b[1] != '7') {
    w = number();
    h = number();
  } else {
    const std::string header(reinterpret_cast<const char*>(b), std::min<size_t>(n, 4096));
    auto field = [&](const std::string& name) -> int64_t {
      const size_t at = header.find("\n" + name + " ");
      if (at == std::string::npos) return -1;
      i = at + name.size() + 2;
      return number();
    };
    w = field("WIDTH");
    h = field("HEIGHT");
  }
  if (w < 0 || h < 0) return std::nullopt;
  return Size{w, h};
}

// The format and size an image file declares in its header, read before anything is decoded so
// that an oversized image costs nothing. OpenCV has no header-only API, and its own guard (2^30
// pixels, fixed when the library loads) is far above ours, so the formats accepted are exactly
// those whose headers are read here; others that OpenCV might decode are refused.
struct Header {
  const char* format;
  int64_t width, height;
};

Header read_header(const std::string& data, const std::string& what) {
  const auto* b = reinterpret_cast<const unsigned char*>(data.data());
  const size_t n = data.size();
  if (n == 0) fail(kRead, what + ": no image data (0 bytes)");
  const char* format = nullptr;
  std::optional<Size> size;
  if (n >= 8 && std::memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) {
    format = "PNG";
    if (n >= 24 && std::memcmp(b + 12, "IHDR", 4) == 0) size = Size{be32(b + 16), be32(b + 20)};
  } else if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) {
    format = "JPEG";
    size = jpeg_size(b, n);
  } else if (n >= 2 && b[0] == 'B' && b[1] == 'M') {
    format = "BMP";
    // BITMAPCOREHEADER (12 bytes) has 16-bit sizes, the later headers signed 32-bit ones (a
    // negative height is a top-down image).
    if (n >= 26 && le32(b + 14) == 12)
      size = Size{le16(b + 18), le16(b + 20)};
    else if (n >= 26)
      size = Size{std::abs(int64_t(static_cast<int32_t>(le32(b + 18)))),
                  std::abs(int64_t(static_cast<int32_t>(le32(b + 22))))};
  } else if (n >= 16 && std::memcmp(b, "RIFF", 4) == 0 && std::memcmp(b + 8, "WEBP", 4) == 0) {
    format = "WebP";
    size = webp_size(b, n);
  } else if (n >= 8 && (std::memcmp(b, "II*\0", 4) == 0 || std::memcmp(b, "MM\0*", 4) == 0)) {
    format = "TIFF";
    size = tiff_size(b, n);
  } else if (n >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '7' && std::isspace(b[2])) {
    format = "PNM";
    size = pnm_size(b, n);
  }
  if (!format)
    fail(kRead, what + ": cannot be decoded: not an image in a supported format (PNG, JPEG, BMP, WebP, TIFF or PNM)");
  if (!size)
    fail(kRead, what + ": cannot be decoded: its " + std::string(format) +
                    " header declares no size (corrupt or truncated)");
  if (size->first == 0 || size->second == 0)
    fail(kRead, what + ": the " + std::string(format) + " header declares an empty image of " +
                    dims(size->first, size->second) + " pixels");
  return {format, size->first, size->second};
}

void check_pixels(const std::string& path, int64_t w, int64_t h, int64_t max_pixels) {
  if (w > 0 && h > max_pixels / w)
    fail(kRead, path + ": image is " + dims(w, h) + " = " +
                    std::to_string(static_cast<unsigned long long>(w) * static_cast<unsigned long long>(h)) +
                    " pixels, above the limit of " + std::to_string(max_pixels) +
                    " (a decompression bomb guard)");
}

void check_image(const at::Tensor& img, const char* op) {
  if (img.scalar_type() != at::kByte || img.dim() != 3 || img.size(2) < 1 || img.size(2) > 4 ||
      img.size(0) < 1 || img.size(1) < 1) {
    std::ostringstream os;
    os << "expected a uint8 [H, W, C] image with 1 to 4 channels, got " << img.scalar_type() << " "
       << img.sizes();
    fail(op, os.str());
  }
}

// ---- Pillow resampling --------------------------------------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= M_PI;
  return std::sin(x) / x;
}

// Pillow's Lanczos: sinc windowed by sinc(x/3), support 3.
double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc(x) * sinc(x / 3.0);
  return 0.0;
}

struct Filter {
  double support;
  double (*kernel)(double);
};

Filter filter_of(Resample filter) {
  switch (filter) {
    case Resample::Bilinear:
      return {1.0, bilinear_filter};
    case Resample::Bicubic:
      return {2.0, bicubic_filter};
    case Resample::Lanczos:
      return {3.0, lanczos_filter};
  }
  return {1.0, bilinear_filter};
}

// Fixed-point weights of one pass: output index i reads inputs first[i] .. first[i]+count[i]-1.
struct Coefficients {
  int64_t ksize = 0;
  std::vector<int64_t> first, count;
  std::vector<int32_t> k;  // [out_size, ksize]
};

Coefficients precompute(int64_t in_size, int64_t out_size, Resample filter) {
  const auto [support_base, kernel] = filter_of(filter);
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = support_base * filterscale;
  Coefficients c;
  c.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.k.assign(out_size * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int64_t xmin = static_cast<int64_t>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int64_t xmax = static_cast<int64_t>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int64_t x = 0; x < xmax; ++x) {
      w[x] = kernel((static_cast<double>(x + xmin) - center + 0.5) * ss);
      ww += w[x];
    }
    for (int64_t x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[x] / ww : w[x];
      c.k[xx * c.ksize + x] = static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits)
                                                         : 0.5 + v * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

inline uint8_t clip8(int64_t acc) {
  const int64_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

// One pass along `axis` (1: width, 0: height) of a contiguous uint8 [H, W, C] image.
at::Tensor resample_pass(const at::Tensor& in, int64_t out_size, int axis, Resample filter) {
  const int64_t H = in.size(0), W = in.size(1), C = in.size(2);
  const Coefficients co = precompute(axis == 1 ? W : H, out_size, filter);
  at::Tensor out = at::empty(axis == 1 ? std::vector<int64_t>{H, out_size, C} : std::vector<int64_t>{out_size, W, C},
                             in.options());
  const uint8_t* src = in.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t out_rows = axis == 1 ? H : out_size;
  const int64_t out_cols = axis == 1 ? out_size : W;
  at::parallel_for(0, out_rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      for (int64_t x = 0; x < out_cols; ++x) {
        const int64_t i = axis == 1 ? x : y;  // index into the coefficients
        const int32_t* k = &co.k[i * co.ksize];
        for (int64_t ch = 0; ch < C; ++ch) {
          int64_t acc = int64_t(1) << (kPrecisionBits - 1);
          for (int64_t j = 0; j < co.count[i]; ++j) {
            const int64_t sy = axis == 1 ? y : co.first[i] + j;
            const int64_t sx = axis == 1 ? co.first[i] + j : x;
            acc += int64_t(src[(sy * W + sx) * C + ch]) * k[j];
          }
          dst[(y * out_cols + x) * C + ch] = clip8(acc);
        }
      }
    }
  });
  return out;
}

// ---- PNG chunks ---------------------------------------------------------------------------------

uint32_t crc32(const std::string& bytes, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t n = 0; n < 256; ++n) {
      uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (unsigned char b : bytes) crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void put_be32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((v >> s) & 0xFF));
}

std::string chunk(const std::string& type, const std::string& data) {
  std::string out;
  put_be32(out, static_cast<uint32_t>(data.size()));
  const std::string body = type + data;
  out += body;
  put_be32(out, crc32(body));
  return out;
}

// Latin-1 bytes of UTF-8 `s`, or nullopt when it has characters beyond U+00FF.
std::optional<std::string> to_latin1(const std::string& s) {
  std::string out;
  for (char32_t c : text::unicode::decode_utf8(s)) {
    if (c > 0xFF) return std::nullopt;
    out.push_back(static_cast<char>(c));
  }
  return out;
}

std::string latin1_to_utf8(const std::string& s) {
  std::u32string u;
  for (unsigned char c : s) u.push_back(c);
  return text::unicode::encode_utf8(u);
}

std::string text_chunk(const std::string& path, const std::string& keyword, const std::string& value) {
  const auto key = to_latin1(keyword);
  bool ok = key && !key->empty() && key->size() <= 79 && key->front() != ' ' && key->back() != ' ' &&
            key->find("  ") == std::string::npos;
  for (unsigned char c : key.value_or("")) ok &= (c >= 32 && c <= 126) || c >= 161;
  if (!ok)
    fail(kPng, path + ": text keyword '" + keyword +
                   "' must be 1-79 printable Latin-1 characters without leading, trailing or double spaces");
  if (value.find('\0') != std::string::npos) fail(kPng, path + ": text value of '" + keyword + "' contains a NUL");
  if (const auto latin1 = to_latin1(value)) return chunk("tEXt", *key + '\0' + *latin1);
  // iTXt: keyword, NUL, compression flag and method (0, 0), empty language tag and translated
  // keyword (each NUL-terminated), then the UTF-8 text.
  return chunk("iTXt", *key + std::string("\0\0\0\0\0", 5) + value);
}

}  // namespace

at::Tensor read_image(const std::string& path, int64_t max_pixels) {
  return decode_image(read_file(path, kRead, kMaxImageFileBytes), path, max_pixels);
}

std::pair<int64_t, int64_t> read_image_size(const std::string& path, int64_t max_pixels) {
  const Header header = read_header(read_file(path, kRead, kMaxImageFileBytes), path);
  check_pixels(path, header.width, header.height, max_pixels);
  return {header.width, header.height};
}

at::Tensor decode_image(const std::string& data, const std::string& what, int64_t max_pixels) {
  const Header header = read_header(data, what);
  check_pixels(what, header.width, header.height, max_pixels);
  if (data.size() > static_cast<size_t>(INT_MAX))
    fail(kRead, what + ": " + std::to_string(data.size()) + " bytes of image data, more than OpenCV decodes");
#if !KOSMOSG_HAVE_OPENCV
  kosmosg::detail::fail_without_opencv(kRead);
#else
  cv::Mat mat;
  try {
    mat = cv::imdecode(cv::Mat(1, static_cast<int>(data.size()), CV_8U, const_cast<char*>(data.data())),
                       cv::IMREAD_UNCHANGED);
  } catch (const cv::Exception&) {
    // OpenCV's message is the text of a failed assertion, which tells a user nothing.
    mat = cv::Mat();
  }
  if (mat.empty() || mat.dims != 2)
    fail(kRead, what + ": the " + std::string(header.format) +
                    " data cannot be decoded (corrupt, truncated or an unsupported variant)");
  check_pixels(what, mat.cols, mat.rows, max_pixels);
  if (mat.depth() != CV_8U && mat.depth() != CV_16U)
    fail(kRead, what + ": unsupported sample type (OpenCV depth " + std::to_string(mat.depth()) +
                    "), expected 8- or 16-bit samples");
  const int64_t H = mat.rows, W = mat.cols, C = mat.channels();
  if (C < 1 || C > 4) fail(kRead, what + ": " + std::to_string(C) + " channels, expected 1 to 4");
  at::Tensor out = at::empty({H, W, 3}, at::kByte);
  uint8_t* dst = out.data_ptr<uint8_t>();
  const bool wide = mat.depth() == CV_16U;
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      uint32_t v[4];
      for (int64_t c = 0; c < C; ++c) {
        const uint32_t s = wide ? mat.ptr<uint16_t>(static_cast<int>(y))[x * C + c]
                                : mat.ptr<uint8_t>(static_cast<int>(y))[x * C + c];
        v[c] = wide ? (s + 128) / 257 : s;
      }
      // OpenCV's channel order is grey[, alpha] or BGR[A].
      uint32_t rgb[3], alpha = 255;
      if (C <= 2) {
        rgb[0] = rgb[1] = rgb[2] = v[0];
        if (C == 2) alpha = v[1];
      } else {
        rgb[0] = v[2], rgb[1] = v[1], rgb[2] = v[0];
        if (C == 4) alpha = v[3];
      }
      uint8_t* p = dst + (y * W + x) * 3;
      for (int c = 0; c < 3; ++c)
        p[c] = static_cast<uint8_t>((rgb[c] * alpha + 255 * (255 - alpha) + 127) / 255);
    }
  }
  return out;
#endif
}

at::Tensor resize(const at::Tensor& hwc_u8, int64_t width, int64_t height, Resample filter) {
  check_image(hwc_u8, kResize);
  if (width < 1 || height < 1) fail(kResize, "target size " + dims(width, height) + " must be positive");
  at::Tensor img = hwc_u8.cpu().contiguous();
  if (img.size(1) != width) img = resample_pass(img, width, 1, filter);
  if (img.size(0) != height) img = resample_pass(img, height, 0, filter);
  return img.data_ptr() == hwc_u8.data_ptr() ? img.clone() : img;
}

at::Tensor resize_shorter_side(const at::Tensor& hwc_u8, int64_t target, Resample filter) {
  check_image(hwc_u8, kResize);
  if (target < 1) fail(kResize, "target size " + std::to_string(target) + " must be positive");
  const int64_t h = hwc_u8.size(0), w = hwc_u8.size(1);
  const int64_t shorter = std::min(w, h), longer = std::max(w, h);
  const auto other = static_cast<int64_t>(static_cast<double>(target * longer) / static_cast<double>(shorter));
  return w <= h ? resize(hwc_u8, target, other, filter) : resize(hwc_u8, other, target, filter);
}

at::Tensor center_crop(const at::Tensor& hwc_u8, int64_t size) {
  check_image(hwc_u8, "center crop");
  const int64_t h = hwc_u8.size(0), w = hwc_u8.size(1);
  if (size < 1 || size > h || size > w)
    fail("center crop", "cannot crop " + dims(size, size) + " out of a " + dims(w, h) + " image");
  // Python's round: half to even, which is nearbyint under the default rounding mode.
  const auto top = static_cast<int64_t>(std::nearbyint((h - size) / 2.0));
  const auto left = static_cast<int64_t>(std::nearbyint((w - size) / 2.0));
  return hwc_u8.slice(0, top, top + size).slice(1, left, left + size).contiguous();
}

at::Tensor clip_pixel_values(const at::Tensor& hwc_u8, int64_t size) {
  const at::Tensor img = center_crop(resize_shorter_side(hwc_u8, size, Resample::Bicubic), size);
  const auto mean = at::tensor({0.48145466, 0.4578275, 0.40821073}, at::kDouble).view({3, 1, 1});
  const auto std = at::tensor({0.26862954, 0.26130258, 0.27577711}, at::kDouble).view({3, 1, 1});
  return ((img.permute({2, 0, 1}).to(at::kDouble) / 255.0 - mean) / std).to(at::kFloat).contiguous();
}

at::Tensor vae_pixel_values(const at::Tensor& hwc_u8, int64_t size) {
  const at::Tensor img = center_crop(resize_shorter_side(hwc_u8, size, Resample::Bilinear), size);
  return ((img.permute({2, 0, 1}).to(at::kDouble) / 255.0 - 0.5) / 0.5).to(at::kFloat).contiguous();
}

at::Tensor dino_pixel_values(const at::Tensor& hwc_u8) {
  const at::Tensor img = center_crop(resize_shorter_side(hwc_u8, 256, Resample::Bicubic), 224);
  const auto mean = at::tensor({0.485f, 0.456f, 0.406f}, at::kFloat).view({3, 1, 1});
  const auto std = at::tensor({0.229f, 0.224f, 0.225f}, at::kFloat).view({3, 1, 1});
  return ((img.permute({2, 0, 1}).to(at::kFloat) / 255.0f - mean) / std).contiguous();
}

void write_png(const std::string& path, const at::Tensor& hwc_u8, const std::map<std::string, std::string>& text) {
  check_image(hwc_u8, kPng);
  if (hwc_u8.size(2) == 2) fail(kPng, path + ": 2-channel images cannot be written, expected 1, 3 or 4 channels");
  const at::Tensor img = hwc_u8.cpu().contiguous();
  std::string chunks;  // checks the text before any encoding
  for (const auto& [key, value] : text) chunks += text_chunk(path, key, value);
#if !KOSMOSG_HAVE_OPENCV
  kosmosg::detail::fail_without_opencv(kPng);
#else
  const int channels = static_cast<int>(img.size(2));
  cv::Mat rgb(static_cast<int>(img.size(0)), static_cast<int>(img.size(1)), CV_8UC(channels), img.data_ptr<uint8_t>());
  cv::Mat bgr;
  if (channels == 3) cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  else if (channels == 4) cv::cvtColor(rgb, bgr, cv::COLOR_RGBA2BGRA);
  else bgr = rgb;
  std::vector<uchar> encoded;
  if (!cv::imencode(".png", bgr, encoded)) fail(kPng, path + ": OpenCV could not encode the image");
  std::string png(encoded.begin(), encoded.end());
  if (png.size() < 33 || png.compare(12, 4, "IHDR") != 0) fail(kPng, path + ": encoder output has no IHDR chunk");
  const size_t after_ihdr = 8 + 12 + be32(reinterpret_cast<const unsigned char*>(png.data()) + 8);
  png.insert(after_ihdr, chunks);
  write_file_atomically(path, [&](std::FILE* f) {
    if (std::fwrite(png.data(), 1, png.size(), f) != png.size()) fail(kPng, "cannot write " + path);
  });
#endif
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
  const std::string data = read_file(path, kPng, kMaxImageFileBytes);
  if (data.size() < 8 || data.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) fail(kPng, path + ": not a PNG file");
  std::map<std::string, std::string> out;
  for (size_t pos = 8;;) {
    if (pos + 12 > data.size()) fail(kPng, path + ": truncated (no IEND chunk)");
    const size_t len = be32(reinterpret_cast<const unsigned char*>(data.data()) + pos);
    if (pos + 12 + len > data.size()) fail(kPng, path + ": truncated chunk at byte " + std::to_string(pos));
    const std::string type = data.substr(pos + 4, 4);
    const std::string body = data.substr(pos + 8, len);
    if (crc32(type + body) != be32(reinterpret_cast<const unsigned char*>(data.data()) + pos + 8 + len))
      fail(kPng, path + ": CRC mismatch in the " + type + " chunk at byte " + std::to_string(pos));
    if (type == "IEND") break;
    const size_t nul = body.find('\0');
    if (type == "tEXt" && nul != std::string::npos) {
      out[latin1_to_utf8(body.substr(0, nul))] = latin1_to_utf8(body.substr(nul + 1));
    } else if (type == "iTXt" && nul != std::string::npos && nul + 2 < body.size() && body[nul + 1] == 0) {
      const size_t lang_end = body.find('\0', nul + 3);
      const size_t key_end = lang_end == std::string::npos ? lang_end : body.find('\0', lang_end + 1);
      if (key_end != std::string::npos) out[latin1_to_utf8(body.substr(0, nul))] = body.substr(key_end + 1);
    }
    pos += 12 + len;
  }
  return out;
}

}  // namespace kosmosg::io
