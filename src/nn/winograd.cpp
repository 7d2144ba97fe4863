#include "nn/winograd.h"

#include "nn/onednn.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <variant>

namespace kosmosg::nn::winograd {
namespace {

constexpr int64_t kTile = 4;    // outputs per tile side
constexpr int64_t kPatch = 6;   // inputs per tile side: kTile + 3 - 1
constexpr int64_t kPoints = kPatch * kPatch;
constexpr int64_t kBlock = 64;  // channels a tile transforms at once, so that its buffers stay in L1

// The tiles are transformed and multiplied a chunk at a time, so that the transformed tiles and
// their products stay within a few MB, mostly in cache, whatever the image size.
constexpr int64_t kChunkBytes = 8 << 20;
constexpr int64_t kMinChunk = 256;  // tiles: fewer would starve the matrix products
// The transformed filters (four times the weight) and a chunk of transformed tiles share a
// workspace kept between calls (see workspace()) of at most this size: peak memory grows by no
// more. The UNet's largest layers at 32² transform their filters a block of channels at a time.
constexpr int64_t kWorkspaceBytes = 96 << 20;

// LibTorch 1.x holds conv options in c10's variant, 2.x in std's.
#if TORCH_VERSION_MAJOR >= 2
using std::get_if;
using std::holds_alternative;
#else
using c10::get_if;
using c10::holds_alternative;
#endif

// Each transform below applies a small matrix along one axis of a tile: `in` holds its rows at
// `in_step` floats from each other, `out` receives its rows likewise, n channels each. Inlined
// into loops over fixed local arrays, the compiler sees that nothing aliases and vectorises.

// Bᵀ (6×6), the input transform.
inline void apply_bt(const float* in, int64_t in_step, float* out, int64_t out_step, int64_t n) {
  const float *d0 = in, *d1 = in + in_step, *d2 = in + 2 * in_step, *d3 = in + 3 * in_step,
              *d4 = in + 4 * in_step, *d5 = in + 5 * in_step;
  float *o0 = out, *o1 = out + out_step, *o2 = out + 2 * out_step, *o3 = out + 3 * out_step,
        *o4 = out + 4 * out_step, *o5 = out + 5 * out_step;
  for (int64_t c = 0; c < n; ++c) {
    const float a = d4[c] - 4.f * d2[c], b = d3[c] - 4.f * d1[c];
    const float e = d4[c] - d2[c], f = 2.f * (d3[c] - d1[c]);
    o0[c] = 4.f * d0[c] - 5.f * d2[c] + d4[c];
    o1[c] = a + b;
    o2[c] = a - b;
    o3[c] = e + f;
    o4[c] = e - f;
    o5[c] = 4.f * d1[c] - 5.f * d3[c] + d5[c];
  }
}

// Aᵀ (4×6), the output transform.
inline void apply_at(const float* in, int64_t in_step, float* out, int64_t out_step, int64_t n) {
  const float *m0 = in, *m1 = in + in_step, *m2 = in + 2 * in_step, *m3 = in + 3 * in_step,
              *m4 = in + 4 * in_step, *m5 = in + 5 * in_step;
  float *o0 = out, *o1 = out + out_step, *o2 = out + 2 * out_step, *o3 = out + 3 * out_step;
  for (int64_t c = 0; c < n; ++c) {
    const float s12 = m1[c] + m2[c], d12 = m1[c] - m2[c];
    const float s34 = m3[c] + m4[c], d34 = m3[c] - m4[c];
    o0[c] = m0[c] + s12 + s34;
    o1[c] = d12 + 2.f * d34;
    o2[c] = s12 + 4.f * s34;
    o3[c] = d12 + 8.f * d34 + m5[c];
  }
}

// G (6×3), the filter transform, along one axis of a block of filters, as above.
inline void apply_g(const float* in, int64_t in_step, float* out, int64_t out_step, int64_t n) {
  constexpr float kSixth = 1.f / 6, kTwelfth = 1.f / 12, kTwentyFourth = 1.f / 24;
  const float *g0 = in, *g1 = in + in_step, *g2 = in + 2 * in_step;
  float *o0 = out, *o1 = out + out_step, *o2 = out + 2 * out_step, *o3 = out + 3 * out_step,
        *o4 = out + 4 * out_step, *o5 = out + 5 * out_step;
  for (int64_t c = 0; c < n; ++c) {
    const float outer = kSixth * (g0[c] + g2[c]), middle = kSixth * g1[c];
    const float near = kTwentyFourth * g0[c] + kSixth * g2[c], far = kTwelfth * g1[c];
    o0[c] = 0.25f * g0[c];
    o1[c] = -outer - middle;
    o2[c] = -outer + middle;
    o3[c] = near + far;
    o4[c] = near - far;
    o5[c] = g2[c];
  }
}

// U [36, count, Cin] = G·g·Gᵀ for the filters g of output channels [first, first + count) of
// w [Cout, Cin, 3, 3]: for each of the 36 points, the weight of a linear map from the input
// channels to those output ones. The filters of a block of input channels are transformed
// together, so that each row of U is written in runs.
void transform_weight(const at::Tensor& w, int64_t first, int64_t count, float* u) {
  constexpr int64_t kIn = 16;
  const int64_t cin = w.size(1);
  const float* src = w.data_ptr<float>() + first * cin * 9;
  at::parallel_for(0, count, 4, [&](int64_t begin, int64_t end) {
    alignas(64) float taps[9][kIn], rows[3 * kPatch][kIn], block[kPoints][kIn];
    for (int64_t co = begin; co < end; ++co)
      for (int64_t ci0 = 0; ci0 < cin; ci0 += kIn) {
        const int64_t nb = std::min(kIn, cin - ci0);
        for (int64_t i = 0; i < nb; ++i)
          for (int64_t q = 0; q < 9; ++q) taps[q][i] = src[(co * cin + ci0 + i) * 9 + q];
        // rows[r·6 + b] = Σ_q G[b][q]·g[r][q], then U[a·6 + b] = Σ_r G[a][r]·rows[r·6 + b].
        for (int64_t r = 0; r < 3; ++r) apply_g(taps[3 * r], kIn, rows[r * kPatch], kIn, nb);
        for (int64_t c = 0; c < kPatch; ++c) apply_g(rows[c], kPatch * kIn, block[c], kPatch * kIn, nb);
        for (int64_t k = 0; k < kPoints; ++k)
          std::memcpy(u + (k * count + co) * cin + ci0, block[k], nb * sizeof(float));
      }
  });
}

struct Geometry {
  int64_t n, h, w, tiles_y, tiles_x;
  int64_t tiles() const { return n * tiles_y * tiles_x; }
};

Geometry geometry_of(const at::Tensor& x) {
  return {x.size(0), x.size(2), x.size(3), (x.size(2) + kTile - 1) / kTile, (x.size(3) + kTile - 1) / kTile};
}

// V [36, count, C] for tiles [first, first + count) of x (NHWC [N, H, W, C]).
void transform_input(const float* x, int64_t channels, const Geometry& g, int64_t first, int64_t count,
                     float* v) {
  at::parallel_for(0, count, 16, [&](int64_t begin, int64_t end) {
    alignas(64) float patch[kPoints][kBlock], half[kPoints][kBlock], out[kPoints][kBlock];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = first + i;
      const int64_t tx = t % g.tiles_x, ty = (t / g.tiles_x) % g.tiles_y, img = t / (g.tiles_x * g.tiles_y);
      const int64_t y0 = ty * kTile - 1, x0 = tx * kTile - 1;  // padding 1
      for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
        const int64_t nb = std::min(kBlock, channels - c0);
        for (int64_t r = 0; r < kPatch; ++r)
          for (int64_t s = 0; s < kPatch; ++s) {
            const int64_t yy = y0 + r, xx = x0 + s;
            float* dst = patch[r * kPatch + s];
            if (yy < 0 || yy >= g.h || xx < 0 || xx >= g.w)
              std::memset(dst, 0, nb * sizeof(float));
            else
              std::memcpy(dst, x + ((img * g.h + yy) * g.w + xx) * channels + c0, nb * sizeof(float));
          }
        for (int64_t s = 0; s < kPatch; ++s) apply_bt(patch[s], kPatch * kBlock, half[s], kPatch * kBlock, nb);
        for (int64_t a = 0; a < kPatch; ++a) apply_bt(half[a * kPatch], kBlock, out[a * kPatch], kBlock, nb);
        for (int64_t k = 0; k < kPoints; ++k)
          std::memcpy(v + (k * count + i) * channels + c0, out[k], nb * sizeof(float));
      }
    }
  });
}

// Channels [c_first, c_first + channels) of y (NHWC [N, H, W, C]) for tiles [first, first + count)
// from their products, one [count, channels] matrix per point, and bias (of those channels).
void transform_output(const float* const* m, const float* bias, int64_t channels, const Geometry& g, int64_t first,
                      int64_t count, float* y, int64_t c_first, int64_t c_total) {
  at::parallel_for(0, count, 16, [&](int64_t begin, int64_t end) {
    alignas(64) float prod[kPoints][kBlock], half[kTile * kPatch][kBlock], out[kTile * kTile][kBlock];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = first + i;
      const int64_t tx = t % g.tiles_x, ty = (t / g.tiles_x) % g.tiles_y, img = t / (g.tiles_x * g.tiles_y);
      for (int64_t c0 = 0; c0 < channels; c0 += kBlock) {
        const int64_t nb = std::min(kBlock, channels - c0);
        for (int64_t k = 0; k < kPoints; ++k)
          std::memcpy(prod[k], m[k] + i * channels + c0, nb * sizeof(float));
        for (int64_t s = 0; s < kPatch; ++s) apply_at(prod[s], kPatch * kBlock, half[s], kPatch * kBlock, nb);
        for (int64_t r = 0; r < kTile; ++r) apply_at(half[r * kPatch], kBlock, out[r * kTile], kBlock, nb);
        for (int64_t r = 0; r < kTile; ++r) {
          const int64_t yy = ty * kTile + r;
          if (yy >= g.h) break;
          for (int64_t s = 0; s < kTile; ++s) {
            const int64_t xx = tx * kTile + s;
            if (xx >= g.w) break;
            float* dst = y + ((img * g.h + yy) * g.w + xx) * c_total + c_first + c0;
            const float* src = out[r * kTile + s];
            if (bias)
              for (int64_t c = 0; c < nb; ++c) dst[c] = src[c] + bias[c0 + c];
            else
              std::memcpy(dst, src, nb * sizeof(float));
          }
        }
      }
    }
  });
}

// How conv2d splits its work: `chunk` tiles at a time and, for each, `block` output channels at a
// time, within the workspace. A split in blocks of channels transforms each block's filters again
// for every chunk, so it is taken only where one chunk holds every tile.
struct Plan {
  int64_t chunk = 0, block = 0;
  bool fits = false;
};

Plan plan_for(int64_t tiles, int64_t cin, int64_t cout) {
  constexpr int64_t kFloat = sizeof(float);
  Plan plan;
  plan.chunk = std::min(tiles, std::max<int64_t>(kMinChunk, kChunkBytes / (kPoints * (cin + cout) * kFloat)));
  const int64_t free_bytes = kWorkspaceBytes - kPoints * plan.chunk * cin * kFloat;
  const int64_t block_fits = free_bytes / (kPoints * cin * kFloat);
  plan.block = block_fits >= cout ? cout : block_fits / 16 * 16;
  // Blocks need a batch's worth of tiles: at 32² with one image (64 tiles) the filter transform
  // costs what the products save, and the packed direct convolution is as fast.
  plan.fits = plan.block == cout || (plan.block >= 16 && plan.chunk == tiles && tiles >= 2 * 64);
  plan.block = std::max(plan.block, std::min<int64_t>(cout, 16));
  return plan;
}

// Scratch memory for the transformed filters and tiles, kept between calls: fresh pages cost
// more to fault in than the transforms that fill them.
float* workspace(int64_t floats) {
  thread_local at::Tensor buffer;
  if (!buffer.defined() || buffer.numel() < floats) {
    buffer = at::Tensor();  // freed before the larger one is taken, so that both never coexist
    buffer = at::empty({floats}, at::kFloat);
  }
  return buffer.data_ptr<float>();
}

}  // namespace

bool pays_for(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const ConvOptions& options) {
  if (x.dim() != 4 || weight.dim() != 4 || weight.size(2) != 3 || weight.size(3) != 3) return false;
  if (options.groups() != 1 || !holds_alternative<torch::enumtype::kZeros>(options.padding_mode())) return false;
  const auto* padding = get_if<torch::ExpandingArray<2>>(&options.padding());
  if (!padding || (*padding)->at(0) != 1 || (*padding)->at(1) != 1) return false;
  for (int64_t i = 0; i < 2; ++i)
    if (options.stride()->at(i) != 1 || options.dilation()->at(i) != 1) return false;
  if (x.is_mkldnn() || weight.is_mkldnn() || !onednn::fits(x, weight, bias)) return false;
  // Measured on 2 AVX2 cores against oneDNN's direct convolution: 1.3-2x faster from 256 channels
  // on both sides at 32² and more; slower at 128 channels and fewer, where the data transforms,
  // which are memory-bound, outweigh the products saved. At 16² the filter transform, made on
  // every call, costs as much as the products.
  const int64_t cout = weight.size(0), cin = weight.size(1);
  if (cout < 256 || cin < 256 || x.size(2) * x.size(3) < 32 * 32) return false;
  return plan_for(geometry_of(x).tiles(), cin, cout).fits;
}

at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  RECORD_FUNCTION("kosmosg::winograd_conv2d", std::vector<c10::IValue>({x, weight}));
  const auto format = x.suggest_memory_format();
  const auto input = x.contiguous(at::MemoryFormat::ChannelsLast);
  const auto w = weight.contiguous();
  const auto b = bias.defined() ? bias.contiguous() : bias;
  const int64_t cin = w.size(1), cout = w.size(0);
  const Geometry g = geometry_of(x);
  const Plan plan = plan_for(g.tiles(), cin, cout);
  float* u = workspace(kPoints * (plan.block * cin + plan.chunk * cin));
  float* v = u + kPoints * plan.block * cin;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto y = at::empty({g.n, cout, g.h, g.w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  for (int64_t first = 0; first < g.tiles(); first += plan.chunk) {
    const int64_t count = std::min(plan.chunk, g.tiles() - first);
    transform_input(input.data_ptr<float>(), cin, g, first, count, v);
    for (int64_t c_first = 0; c_first < cout; c_first += plan.block) {
      const int64_t channels = std::min(plan.block, cout - c_first);
      if (first == 0 || plan.block < cout) transform_weight(w, c_first, channels, u);
      std::array<at::Tensor, kPoints> products;
      std::array<const float*, kPoints> m;
      for (int64_t k = 0; k < kPoints; ++k) {
        const auto vk = at::from_blob(v + k * count * cin, {count, cin}, f32);
        const auto uk = at::from_blob(u + k * channels * cin, {channels, cin}, f32);
        auto product = onednn::linear(vk, uk, at::Tensor());
        products[k] = product ? *product : at::mm(vk, uk.t());
        m[k] = products[k].data_ptr<float>();
      }
      transform_output(m.data(), b.defined() ? b.data_ptr<float>() + c_first : nullptr, channels, g, first, count,
                       y.data_ptr<float>(), c_first, cout);
    }
  }
  return y.contiguous(format);
}

}  // namespace kosmosg::nn::winograd
