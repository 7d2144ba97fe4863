#pragma once
// The sampler loop's UNet forward captured once as a CUDA graph and replayed at every step. At
// batch 1-2 on a fast GPU a step is bound by the host launching the UNet's kernels one by one,
// not by their arithmetic; a replay launches them all at once.
#include <ATen/core/Tensor.h>

#include <memory>

#include "kosmosg/models/unet.h"

namespace kosmosg::pipeline::detail {

class UNetGraph {
 public:
  // Captures `unet` on (sample, timestep, context), all on one CUDA device. nullptr off CUDA (or
  // in a build without it), and with a warning naming why where the capture fails (an operation
  // in the forward that a graph cannot hold). `context` is copied and stays fixed. While the graph
  // lives, the UNet's convolution weights are channels-last (set_cuda_channels_last).
  static std::unique_ptr<UNetGraph> capture(models::UNet2DConditionModel unet, const at::Tensor& sample,
                                            const at::Tensor& timestep, const at::Tensor& context);
  virtual ~UNetGraph() = default;
  // The UNet's output for this sample and timestep (the captured shapes and dtypes), in float32.
  virtual at::Tensor forward(const at::Tensor& sample, double timestep) = 0;
};

}  // namespace kosmosg::pipeline::detail
