#pragma once
// Autocast (mixed precision) settings of the current thread, read and set in one place for
// LibTorch 1.x and 2.x: the trainer's forward runs under them, checkpointed blocks replay them.
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace kosmosg::nn {

struct AutocastState {
  bool cpu = false, cuda = false;
  c10::ScalarType cpu_dtype = c10::kBFloat16, cuda_dtype = c10::kHalf;

  static AutocastState current();
  void apply() const;
};

// Turns autocast to `dtype` on for `device` (float32: off) until destroyed, then restores the
// previous settings.
class AutocastGuard {
 public:
  AutocastGuard(c10::DeviceType device, c10::ScalarType dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  AutocastState previous_;
};

}  // namespace kosmosg::nn
