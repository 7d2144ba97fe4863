#pragma once
// Normalisation layers shared by every model.
#include <torch/nn/modules/normalization.h>

#include <cstdint>

namespace kosmosg::nn {

// LayerNorm over the last dimension of size `dim` with `eps`, affine as upstream.
torch::nn::LayerNorm layer_norm(int64_t dim, double eps);

}  // namespace kosmosg::nn
