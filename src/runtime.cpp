#include "kosmosg/runtime.h"

#include <ATen/Context.h>
#include <ATen/Version.h>
#include <spdlog/spdlog.h>
#include <torch/version.h>
#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <limits>
#include <thread>

#include "kosmosg/error.h"
#include "kosmosg_features.h"
#if KOSMOSG_HAVE_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace kosmosg {

namespace detail {
const char* version();  // generated from the CMake project() (cmake/version.cpp.in)
}  // namespace detail

namespace {

int core_count() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

// A `KEY=value` of LibTorch's build settings ("" when absent).
std::string build_setting(const std::string& config, const std::string& key) {
  const auto at = config.find(key + "=");
  if (at == std::string::npos) return "";
  const auto begin = at + key.size() + 1;
  return config.substr(begin, config.find_first_of(",\n", begin) - begin);
}

}  // namespace

std::string build_report() {
  const std::string config = at::show_config();
  std::string out = std::string("kosmosg ") + detail::version() + "\nLibTorch " + TORCH_VERSION;
  if (!torch::cuda::is_available()) {
    // (at::hasCUDA() is false without a GPU on LibTorch 2.x even when CUDA is built in.)
    out += KOSMOSG_HAVE_CUDA || at::hasCUDA() ? "\nCUDA: compiled in, no GPU visible" : "\nCUDA: not compiled in (CPU only)";
  } else {
    out += "\nCUDA: compiled in, " + std::to_string(torch::cuda::device_count()) + " GPU(s) visible";
#if KOSMOSG_HAVE_CUDA
    for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i) {
      const auto* p = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(i));
      out += "\n  cuda:" + std::to_string(i) + " " + p->name + ", " + std::to_string(p->totalGlobalMem >> 20) +
             " MiB, compute capability " + std::to_string(p->major) + "." + std::to_string(p->minor);
    }
#endif
  }
  if (!has_opencv()) out += "\nimages: not built in (KOSMOSG_WITH_OPENCV=OFF)";
  const std::string blas = build_setting(config, "BLAS_INFO"), onednn = build_setting(config, "USE_MKLDNN");
  // A "generic" BLAS is whichever libblas.so the loader picked (Debian's alternatives): name its file.
  std::string blas_library;
  Dl_info info{};
  if (void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_"); sgemm && dladdr(sgemm, &info) && info.dli_fname) {
    std::error_code ec;
    const auto resolved = std::filesystem::canonical(info.dli_fname, ec);
    blas_library = " (" + (ec ? std::string(info.dli_fname) : resolved.string()) + ")";
  }
  out += "\nBLAS: " + (blas.empty() ? std::string("unknown") : blas) + blas_library + ", oneDNN: " +
         (onednn == "ON" ? "on" : onednn.empty() ? "unknown" : "off");
  const std::string capability_label = "CPU capability usage: ";
  if (const auto at = config.find(capability_label); at != std::string::npos) {
    const auto begin = at + capability_label.size();
    out += ", CPU kernels: " + config.substr(begin, config.find('\n', begin) - begin);
  }
  out += "\nthreads: " + std::to_string(core_count()) + " (every core; --threads N to change), OMP_WAIT_POLICY=" +
         (std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "unset");
  return out;
}

bool has_opencv() { return KOSMOSG_HAVE_OPENCV; }

void synchronize(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

#if KOSMOSG_HAVE_CUDA
namespace {
c10::DeviceIndex cuda_index(const c10::Device& device) { return device.has_index() ? device.index() : 0; }
}  // namespace
#endif

int64_t peak_device_memory(const c10::Device& device) {
#if KOSMOSG_HAVE_CUDA
  // Entry 0 of a statistic is the aggregate over the large and small pools (StatType::AGGREGATE).
  if (device.is_cuda())
    return c10::cuda::CUDACachingAllocator::getDeviceStats(cuda_index(device)).allocated_bytes[0].peak;
#endif
  return 0;
}

std::string device_name(const c10::Device& device) {
#if KOSMOSG_HAVE_CUDA
  if (device.is_cuda()) return at::cuda::getDeviceProperties(cuda_index(device))->name;
#endif
  return device.str();
}

void reset_peak_device_memory(const c10::Device& device) {
#if KOSMOSG_HAVE_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(cuda_index(device));
#endif
}

int configure_threads(int threads) {
  const int cores = core_count();
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

c10::ScalarType parse_storage_dtype(const std::string& name, const c10::Device& device, c10::ScalarType dtype) {
  if (name == "float32") return c10::kFloat;
  if (name != "bfloat16" && name != "float16")
    fail("storage-dtype", "--storage-dtype '" + name + "' is not one of float32, bfloat16 or float16");
  if (!device.is_cpu() || dtype != c10::kFloat)
    fail("storage-dtype", "--storage-dtype " + name + " stores weights for float32 compute on the CPU; with --device " +
                              device.str() + " --dtype " + c10::toString(dtype) + " use --dtype alone");
  return name == "bfloat16" ? c10::kBFloat16 : c10::kHalf;
}

void ensure_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY")) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
  // Not re-executed (no /proc): run on with the policy the runtime already read.
}

void keep_freed_memory() {
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
}

}  // namespace kosmosg
