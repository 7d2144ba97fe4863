#pragma once
// Golden parity harness: every case file under $KOSMOSG_GOLDEN_DIR is dispatched on its
// `module` metadata to a runner registered with KOSMOSG_GOLDEN_MODULE (JSON goldens on their
// file name with KOSMOSG_GOLDEN_JSON). A runner computes outputs and hands them to
// `report.check`; every output.* of the file must be checked or the case fails.
#include <torch/torch.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kosmosg/io/safetensors.h"

namespace kosmosg::golden {

// Where the suite computes: $KOSMOSG_TEST_DEVICE (cpu, cuda, cuda:N; default cpu) and
// $KOSMOSG_TEST_DTYPE (float32, float16, bfloat16; default float32).
struct Placement {
  c10::Device device{c10::kCPU};
  c10::ScalarType dtype = c10::kFloat;
};
const Placement& placement();
// A case's tolerance `bound` in the test dtype: in half precision at least 1e-2 (float16) or
// 5e-2 (bfloat16), the relative L2 of a few layers rounded to 11 or 8 significant bits.
double placed_tolerance(double bound);
// The module's parameters and buffers on the test device in the test dtype, in eval mode.
void place(torch::nn::Module& module);
// `t` on the test device; floating tensors in the test dtype.
at::Tensor placed(const at::Tensor& t);

struct Case {
  std::string path;      // absolute path of the file
  std::string name;      // path relative to the golden folder, for printing
  io::SafeTensors file;
  std::string module;
  nlohmann::json config;
  std::string call;
  nlohmann::json tolerance;

  bool has(const std::string& key) const { return file.contains(key); }
  // input.<name> on the test device (floating inputs in the test dtype).
  at::Tensor input(const std::string& name) const { return placed(file.get("input." + name)); }
  // input.<name> on the test device in its stored dtype: in the training cases the precision
  // policy, not the inputs' dtype, decides what computes in half precision.
  at::Tensor training_input(const std::string& name) const {
    return file.get("input." + name).to(placement().device);
  }
  at::Tensor expected(const std::string& name) const { return file.get("output." + name); }
  // param.<prefix>* with the prefix removed ("" for single-module files, "unet." etc.).
  io::TensorMap params(const std::string& prefix = "") const { return file.tensors("param." + prefix); }
  // Names (without "output.") of every output tensor in the file.
  std::vector<std::string> outputs() const;
  // Names (without "input.<prefix>") of the inputs starting with `prefix`.
  std::vector<std::string> inputs(const std::string& prefix = "") const;
};

struct Check {
  std::string output;
  double error = 0;      // relative L2, or number of differing elements when exact
  double tolerance = 0;  // 0 when exact
  bool exact = false;
  bool pass = false;
  std::string note;
};

class Report {
 public:
  // Compares `actual` with output.<name> under the case's tolerance for <name>
  // (`tolerance_key` when the tolerance is listed under another name).
  void check(const Case& c, const std::string& name, const at::Tensor& actual,
             const std::string& tolerance_key = "");
  // The case cannot run in this build or placement (it is reported as skipped, with `why`).
  void skip(const std::string& why) { skipped_ = why; }
  const std::string& skipped() const { return skipped_; }
  // A failure that is not a tensor comparison (an exception, a mismatch in a JSON golden).
  void fail(const std::string& what, const std::string& why);
  // A JSON golden's comparison: `failures` of `total` items differ.
  void count(const std::string& what, size_t failures, size_t total);
  const std::vector<Check>& checks() const { return checks_; }

 private:
  std::vector<Check> checks_;
  std::string skipped_;
};

using CaseRunner = std::function<void(const Case&, Report&)>;
using JsonRunner = std::function<void(const std::string& path, const nlohmann::json&, Report&)>;

bool register_module(const std::string& module, CaseRunner runner);
bool register_json(const std::string& file_name, JsonRunner runner);

// Tolerance of output `name` from the case metadata: {exact, bound}.
std::pair<bool, double> tolerance_of(const Case& c, const std::string& name);

// Relative L2 error ‖a − b‖ / ‖b‖ in float64 (absolute when ‖b‖ is 0).
double relative_l2(const at::Tensor& actual, const at::Tensor& expected);

// Folder of the shared test data (fixtures, golden): $KOSMOSG_SHARED_DIR or the build default.
std::string shared_dir();

}  // namespace kosmosg::golden

#define KOSMOSG_GOLDEN_CAT2(a, b) a##b
#define KOSMOSG_GOLDEN_CAT(a, b) KOSMOSG_GOLDEN_CAT2(a, b)
#define KOSMOSG_GOLDEN_MODULE(module, runner)                                       \
  static const bool KOSMOSG_GOLDEN_CAT(kosmosg_golden_registered_, __LINE__) = \
      ::kosmosg::golden::register_module(module, runner)
#define KOSMOSG_GOLDEN_JSON(file_name, runner)                                      \
  static const bool KOSMOSG_GOLDEN_CAT(kosmosg_golden_registered_, __LINE__) = \
      ::kosmosg::golden::register_json(file_name, runner)
