#pragma once
// Counts the floating-point operations of the matrix products, convolutions and fused attention
// that run while a FlopCounter lives, forward and backward, on every thread. The formulas are
// those of PyTorch's torch.utils.flop_counter: a multiply-add is two operations, a convolution
// counts as a direct one whatever algorithm runs it.
#include <cstdint>

namespace kosmosg {

class FlopCounter {
 public:
  // One counter at a time: a second while one lives is an error.
  FlopCounter();
  ~FlopCounter();
  FlopCounter(const FlopCounter&) = delete;
  FlopCounter& operator=(const FlopCounter&) = delete;
  // The operations counted so far.
  double total() const;

 private:
  uint64_t handle_;
};

}  // namespace kosmosg
