#include "kosmosg/nn/norms.h"

namespace kosmosg::nn {

torch::nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(eps));
}

}  // namespace kosmosg::nn
