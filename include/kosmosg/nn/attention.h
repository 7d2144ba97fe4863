#pragma once
// The one attention kernel every model uses: softmax(q·kᵀ·scale + mask)·v.
#include <ATen/core/Tensor.h>

#include <optional>

namespace kosmosg::nn {

struct AttentionOptions {
  bool causal = false;                   // key position > query position is excluded
  std::optional<at::Tensor> mask;        // additive float mask or bool keep-mask, broadcast to [B,H,Lq,Lk]
  std::optional<double> scale;           // default 1/sqrt(head_dim)
  double dropout = 0;                    // drop probability on the attention weights (pass 0 in eval)
};

// q: [B, H, Lq, D], k/v: [B, H, Lk, D] -> [B, H, Lq, D]. Uses the fused kernel where LibTorch
// has one (2.x) and a query-blocked kernel on LibTorch 1.x CPU that bounds the score memory.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const AttentionOptions& options = {});

// [B, L, H·D] -> [B, H, L, D] and back.
at::Tensor split_heads(const at::Tensor& x, int64_t heads);
at::Tensor merge_heads(const at::Tensor& x);

}  // namespace kosmosg::nn
