#include "kosmosg/runtime.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "kosmosg/error.h"

namespace kosmosg {

int configure_threads(int threads) {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // More threads than cores only contend: a thousand of them all but stall LibTorch.
  if (threads < 0 || threads > cores)
    fail_setting("threads", "threads", "{} must be from 1 to " + std::to_string(cores) +
                                           " (the cores here), or 0 for all, got " + std::to_string(threads));
  const int n = threads == 0 ? cores : threads;
  torch::set_num_threads(n);
  spdlog::debug("LibTorch intra-op threads: {} (of {} cores)", torch::get_num_threads(), cores);
  return torch::get_num_threads();
}

c10::Device parse_device(const std::string& name) {
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    fail("device", "unknown device '" + name + "' (expected cpu, cuda or cuda:N)");
  }
  if (device.is_cuda() && !torch::cuda::is_available())
    fail("device", "'" + name + "' requested but this LibTorch has no usable CUDA device");
  if (!device.is_cpu() && !device.is_cuda())
    fail("device", "unsupported device '" + name + "' (expected cpu, cuda or cuda:N)");
  return device;
}

c10::ScalarType parse_dtype(const std::string& name, const c10::Device& device) {
  if (name == "auto") return device.is_cuda() ? c10::kHalf : c10::kFloat;
  if (name == "float32" || name == "fp32") return c10::kFloat;
  if (name == "bfloat16" || name == "bf16") return c10::kBFloat16;
  if (name == "float16" || name == "fp16") {
    if (device.is_cpu())
      fail("dtype", "float16 is not supported on the CPU (LibTorch lacks half-precision CPU "
                    "convolutions); use float32 or bfloat16");
    return c10::kHalf;
  }
  fail("dtype", "unknown dtype '" + name + "' (expected auto, float32, float16 or bfloat16)");
}

void ensure_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
  // Not re-executed (no /proc): run on with the policy the runtime already read.
}

}  // namespace kosmosg
