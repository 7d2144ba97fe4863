#include "kosmosg/nn/attention.h"

#include <torch/torch.h>

#include <cmath>

namespace kosmosg::nn {
namespace {

at::Tensor as_additive(const at::Tensor& mask, const at::Tensor& like) {
  if (mask.scalar_type() != at::kBool) return mask.to(like.scalar_type());
  auto neg = at::full({}, std::numeric_limits<float>::lowest(), like.options());
  return at::where(mask, at::zeros({}, like.options()), neg);
}

}  // namespace

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionOptions& options) {
  const int64_t lq = q.size(-2), lk = k.size(-2);
  const double scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  at::Tensor bias;
  if (options.mask) bias = as_additive(*options.mask, q);
  if (options.causal) {
    auto causal = at::ones({lq, lk}, q.options().dtype(at::kBool)).tril(lk - lq);
    bias = bias.defined() ? bias + as_additive(causal, q) : as_additive(causal, q);
  }
  auto scores = at::matmul(q * scale, k.transpose(-2, -1));
  if (bias.defined()) scores = scores + bias;
  auto weights = at::softmax(scores, -1);
  if (options.dropout > 0) weights = at::dropout(weights, options.dropout, /*train=*/true);
  return at::matmul(weights, v);
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
