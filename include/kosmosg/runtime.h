#pragma once
// Process-wide runtime settings: threads, device and dtype selection.
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>

namespace kosmosg {

// Sets LibTorch's intra-op thread count (0 = every core; more than the cores is an error) and
// returns the count in use.
// Debian's LibTorch starts with one thread, so every entry point calls this.
int configure_threads(int threads);

// "cpu", "cuda" or "cuda:N"; an error when LibTorch was built without that device.
c10::Device parse_device(const std::string& name);

// "float32", "float16", "bfloat16" or "auto" (float16 on CUDA, float32 on CPU). float16 on CPU is
// refused: LibTorch's CPU kernels lack half-precision convolutions.
c10::ScalarType parse_dtype(const std::string& name, const c10::Device& device);

// --storage-dtype: "float32" (weights as --dtype), "bfloat16" or "float16" (blocks stored in half
// precision for float32 compute; see Pipeline::from_folder). The compute `dtype` must be float32
// and the device the CPU.
c10::ScalarType parse_storage_dtype(const std::string& name, const c10::Device& device, c10::ScalarType dtype);

// What `kosmosg --version` prints: the kosmosg and LibTorch versions, whether CUDA is compiled in
// and which GPUs are visible, the BLAS and oneDNN LibTorch uses, and the thread count.
std::string build_report();

// Whether this build decodes and writes images (built with OpenCV, KOSMOSG_WITH_OPENCV).
bool has_opencv();

// Waits for the work queued on `device` (a no-op on the CPU), so that a timer reads finished work.
void synchronize(const c10::Device& device);

// The most bytes of tensors held on a CUDA `device` since the last reset (0 on the CPU), and the reset.
int64_t peak_device_memory(const c10::Device& device);
void reset_peak_device_memory(const c10::Device& device);
// What the device calls itself ("NVIDIA H200"); "cpu" for the CPU.
std::string device_name(const c10::Device& device);

// Re-executes the current program with OMP_WAIT_POLICY=PASSIVE when it is unset: the OpenMP
// runtime reads it only at start, and spin-waiting threads fight OpenBLAS's for the cores.
void ensure_passive_omp_wait(char** argv);

// Makes glibc's malloc serve large blocks from its heap and keep what is freed there. A training
// loop allocates the same large tensors every step; handing them back to the kernel and faulting
// them in again cost 40 % of a small model's CPU step. The process keeps its peak instead.
void keep_freed_memory();

}  // namespace kosmosg
