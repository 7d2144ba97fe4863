#pragma once
// Positional schemes shared by the models.
#include <ATen/core/Tensor.h>

namespace kosmosg::nn {

// fairseq's sinusoidal positional embedding of `tokens` [B, T] -> [B, T, dim] (dtype of `like`):
// non-pad tokens get positions padding_idx+1, padding_idx+2, ... counted per row over non-pads;
// pads get a zero row. Row p is [sin(p·f_0..f_{h-1}), cos(p·f_0..f_{h-1})] with h = dim/2,
// f_i = exp(-i·ln(10000)/(h-1)), plus a zero column when dim is odd. Computed on demand.
at::Tensor fairseq_sinusoidal_positions(const at::Tensor& tokens, int64_t dim,
                                        int64_t padding_idx, const at::Tensor& like);

}  // namespace kosmosg::nn
