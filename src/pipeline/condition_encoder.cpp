#include "kosmosg/pipeline/condition_encoder.h"

#include <ATen/ATen.h>

namespace kosmosg::pipeline {

at::Tensor Conditions::batch() const {
  return unconditional.defined() ? at::cat({unconditional, conditional}) : conditional;
}

}  // namespace kosmosg::pipeline
