#include "kosmosg/nn/positions.h"

#include <cmath>

#include "kosmosg/error.h"

namespace kosmosg::nn {

at::Tensor fairseq_sinusoidal_positions(const at::Tensor& tokens, int64_t dim,
                                        int64_t padding_idx, const at::Tensor& like) {
  if (tokens.dim() != 2) fail("positions", "tokens must be [B, T], found " + std::to_string(tokens.dim()) + " dims");
  const int64_t half = dim / 2;
  if (half < 2) fail("positions", "sinusoidal width " + std::to_string(dim) + " is below 4");
  auto real = tokens.ne(padding_idx);
  auto positions = (real.to(at::kLong).cumsum(1) + padding_idx).to(at::kDouble);
  auto options = like.options().dtype(at::kDouble);
  auto freqs = at::exp(at::arange(half, options) * (-std::log(10000.0) / static_cast<double>(half - 1)));
  auto angles = positions.to(like.device()).unsqueeze(-1) * freqs;
  auto table = at::cat({at::sin(angles), at::cos(angles)}, -1);
  if (dim % 2 == 1) table = at::cat({table, at::zeros({tokens.size(0), tokens.size(1), 1}, options)}, -1);
  table = table * real.to(like.device()).unsqueeze(-1).to(at::kDouble);
  return table.to(like.scalar_type());
}

}  // namespace kosmosg::nn
