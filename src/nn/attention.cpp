#include "kosmosg/nn/attention.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>

#define KOSMOSG_TORCH_HAS_SDPA_SCALE \
  (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1))

namespace kosmosg::nn {
namespace {

// torch.finfo(dtype).min: float's lowest overflows half and bfloat16.
double lowest_finite(at::ScalarType type) {
  switch (type) {
    case at::kHalf:
      return static_cast<float>(std::numeric_limits<c10::Half>::lowest());
    case at::kBFloat16:
      return static_cast<float>(std::numeric_limits<c10::BFloat16>::lowest());
    case at::kDouble:
      return std::numeric_limits<double>::lowest();
    default:
      return std::numeric_limits<float>::lowest();
  }
}

at::Tensor as_additive(const at::Tensor& mask, const at::Tensor& like) {
  if (mask.scalar_type() != at::kBool) return mask.to(like.scalar_type());
  // The lowest finite value, not -inf, so a fully masked row stays finite (uniform), as in HF.
  auto neg = at::full({}, lowest_finite(like.scalar_type()), like.options());
  return at::where(mask, at::zeros({}, like.options()), neg);
}

// The additive bias combining the optional mask and the causal rule, or an undefined tensor.
at::Tensor attention_bias(const at::Tensor& q, int64_t lq, int64_t lk, const AttentionOptions& options) {
  at::Tensor bias;
  if (options.mask) bias = as_additive(*options.mask, q);
  if (options.causal) {
    auto causal = as_additive(at::ones({lq, lk}, q.options().dtype(at::kBool)).tril(lk - lq), q);
    bias = bias.defined() ? bias + causal : causal;
  }
  return bias;
}

// LibTorch before 2.1 has no SDPA with a scale: the two kernels it needs instead.
#if !KOSMOSG_TORCH_HAS_SDPA_SCALE
// Scores of one query block stay within this many elements (16 MiB of float32): measured on
// 2 cores, the 4096-token self-attention of SD's first UNet block runs 2.3× faster than with the
// whole score matrix, which makes the softmax memory-bound.
constexpr int64_t kScoreBlockElements = int64_t{1} << 22;

at::Tensor differentiable_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const at::Tensor& bias, double scale, double dropout) {
  auto scores = at::matmul(q * scale, k.transpose(-2, -1));
  if (bias.defined()) scores = scores + bias;
  auto weights = at::softmax(scores, -1);
  if (dropout > 0) weights = at::dropout(weights, dropout, /*train=*/true);
  return at::matmul(weights, v);
}

// Inference kernel: queries in blocks whose score matrix stays cache-sized, computed into reused
// buffers with an in-place softmax. Not differentiable.
at::Tensor blocked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& bias, double scale) {
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), lk = k.size(2);
  const int64_t bh = b * h;
  const at::Tensor q3 = (q * scale).reshape({bh, lq, q.size(3)});
  const at::Tensor kt = k.reshape({bh, lk, k.size(3)}).transpose(1, 2);
  const at::Tensor v3 = v.reshape({bh, lk, v.size(3)});
  at::Tensor bias4;
  if (bias.defined()) bias4 = bias.expand({b, h, lq, lk});
  at::Tensor out = at::empty({bh, lq, v.size(3)}, q.options());
  const int64_t rows = std::clamp<int64_t>(kScoreBlockElements / std::max<int64_t>(1, bh * lk), 1, lq);
  at::Tensor buffer = at::empty({bh, rows, lk}, q.options());
  for (int64_t start = 0; start < lq; start += rows) {
    const int64_t n = std::min(rows, lq - start);
    // A partial tail block gets its own contiguous buffer: the out= kernels want contiguous outputs.
    at::Tensor scores = n == rows ? buffer : at::empty({bh, n, lk}, q.options());
    at::bmm_out(scores, q3.narrow(1, start, n), kt);
    if (bias4.defined()) scores.view({b, h, n, lk}).add_(bias4.narrow(2, start, n));
    at::_softmax_out(scores, scores, -1, false);
    at::Tensor target = out.narrow(1, start, n);
    at::bmm_out(target, scores, v3);
  }
  return out.view({b, h, lq, v.size(3)});
}
#endif

}  // namespace

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionOptions& options) {
  const int64_t lq = q.size(-2), lk = k.size(-2);
  const double scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
#if KOSMOSG_TORCH_HAS_SDPA_SCALE
  if (!options.mask) {
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/c10::nullopt, options.dropout,
                                            options.causal, scale);
  }
  return at::scaled_dot_product_attention(q, k, v, attention_bias(q, lq, lk, options), options.dropout,
                                          /*is_causal=*/false, scale);
#else
  const at::Tensor bias = attention_bias(q, lq, lk, options);
  const bool needs_grad = at::GradMode::is_enabled() &&
                          (q.requires_grad() || k.requires_grad() || v.requires_grad());
  if (needs_grad || options.dropout > 0 || q.dim() != 4)
    return differentiable_attention(q, k, v, bias, scale, options.dropout);
  return blocked_attention(q.contiguous(), k.contiguous(), v.contiguous(), bias, scale);
#endif
}

at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
  const int64_t b = x.size(0), l = x.size(1), c = x.size(2);
  return x.view({b, l, heads, c / heads}).transpose(1, 2);
}

at::Tensor merge_heads(const at::Tensor& x) {
  const int64_t b = x.size(0), h = x.size(1), l = x.size(2), d = x.size(3);
  return x.transpose(1, 2).reshape({b, l, h * d});
}

}  // namespace kosmosg::nn
