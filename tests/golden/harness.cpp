#include "harness.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/runtime.h"
#include "support.h"

namespace kosmosg::golden {
namespace {

std::map<std::string, CaseRunner>& module_runners() {
  static std::map<std::string, CaseRunner> m;
  return m;
}
std::map<std::string, JsonRunner>& json_runners() {
  static std::map<std::string, JsonRunner> m;
  return m;
}

std::string format_error(const Check& c) {
  char buf[160];
  if (c.exact)
    std::snprintf(buf, sizeof buf, "%s %g differ (exact)", c.output.c_str(), c.error);
  else
    std::snprintf(buf, sizeof buf, "%s %.2e / %.0e", c.output.c_str(), c.error, c.tolerance);
  return buf;
}

struct Outcome {
  std::string status;  // PASS, FAIL, SKIP
  std::string detail;
};

Outcome summarise(const Report& report, const std::vector<std::string>& required) {
  if (!report.skipped().empty()) return {"SKIP", report.skipped()};
  const auto& checks = report.checks();
  std::vector<std::string> unchecked;
  for (const auto& name : required) {
    bool seen = false;
    for (const auto& c : checks) seen |= c.output == name;
    if (!seen) unchecked.push_back(name);
  }
  if (checks.empty()) return {"FAIL", "the runner checked nothing"};
  const Check* worst = nullptr;
  double worst_ratio = -1;
  for (const auto& c : checks) {
    double ratio = c.pass ? (c.exact ? 0 : c.error / std::max(c.tolerance, 1e-30)) : 1e30;
    if (ratio > worst_ratio) worst_ratio = ratio, worst = &c;
  }
  std::string detail = "worst " + format_error(*worst);
  if (!worst->note.empty()) detail += " (" + worst->note + ")";
  if (!unchecked.empty()) {
    detail += "; unchecked outputs:";
    for (const auto& u : unchecked) detail += " " + u;
    return {"FAIL", detail};
  }
  return {worst->pass ? "PASS" : "FAIL", detail};
}

}  // namespace

const Placement& placement() {
  static const Placement p = [] {
    Placement out;
    const char* device = std::getenv("KOSMOSG_TEST_DEVICE");
    const char* dtype = std::getenv("KOSMOSG_TEST_DTYPE");
    out.device = kosmosg::parse_device(device ? device : "cpu");
    out.dtype = kosmosg::parse_dtype(dtype ? dtype : "float32", out.device);
    if (out.device.is_cuda()) {
      // The goldens are float32 arithmetic: TensorFloat-32 matrix products would round to 10 bits.
      at::globalContext().setAllowTF32CuBLAS(false);
      at::globalContext().setAllowTF32CuDNN(false);
    }
    return out;
  }();
  return p;
}

double placed_tolerance(double bound) {
  if (placement().dtype == at::kHalf) return std::max(bound, 1e-2);
  if (placement().dtype == at::kBFloat16) return std::max(bound, 5e-2);
  return bound;
}

void place(torch::nn::Module& module) {
  module.to(placement().device, placement().dtype);
  module.eval();
}

at::Tensor placed(const at::Tensor& t) {
  if (t.is_floating_point()) return t.to(placement().device, placement().dtype);
  return t.to(placement().device);
}

std::vector<std::string> Case::outputs() const {
  std::vector<std::string> out;
  for (const auto& k : file.keys())
    if (k.rfind("output.", 0) == 0) out.push_back(k.substr(7));
  return out;
}

std::vector<std::string> Case::inputs(const std::string& prefix) const {
  std::vector<std::string> out;
  const std::string full = "input." + prefix;
  for (const auto& k : file.keys())
    if (k.rfind(full, 0) == 0) out.push_back(k.substr(full.size()));
  return out;
}

std::pair<bool, double> tolerance_of(const Case& c, const std::string& name) {
  double bound = 1e-4;
  auto it = c.tolerance.find(name);
  if (it == c.tolerance.end()) return {false, bound};
  if (it->is_number()) return {false, it->get<double>()};
  if (it->is_string()) {
    const std::string s = it->get<std::string>();
    if (s.rfind("exact", 0) == 0) return {true, 0};
    try {
      return {false, std::stod(s)};
    } catch (const std::exception&) {
      kosmosg::fail("golden", c.name + ": tolerance '" + s + "' of " + name + " is not a number");
    }
  }
  kosmosg::fail("golden", c.name + ": tolerance of " + name + " is neither a number nor a string");
}

double relative_l2(const at::Tensor& actual, const at::Tensor& expected) {
  auto a = actual.detach().to(at::kCPU, at::kDouble);
  auto b = expected.detach().to(at::kCPU, at::kDouble);
  const double ref = b.norm().item<double>();
  const double diff = (a - b).norm().item<double>();
  return ref > 0 ? diff / ref : diff;
}

void Report::check(const Case& c, const std::string& name, const at::Tensor& actual,
                   const std::string& tolerance_key) {
  Check out;
  out.output = name;
  const at::Tensor expected = c.expected(name);
  auto [exact, bound] = tolerance_of(c, tolerance_key.empty() ? name : tolerance_key);
  out.exact = exact;
  out.tolerance = exact ? bound : placed_tolerance(bound);
  if (actual.sizes() != expected.sizes()) {
    std::ostringstream os;
    os << "shape " << actual.sizes() << ", expected " << expected.sizes();
    out.error = std::numeric_limits<double>::infinity();
    out.note = os.str();
  } else if (exact) {
    auto a = actual.detach().to(at::kCPU, at::kDouble);
    auto b = expected.detach().to(at::kCPU, at::kDouble);
    out.error = a.ne(b).sum().item<double>();
    out.pass = out.error == 0;
  } else {
    out.error = relative_l2(actual, expected);
    out.pass = out.error <= out.tolerance;
  }
  checks_.push_back(out);
}

void Report::fail(const std::string& what, const std::string& why) {
  Check out;
  out.output = what;
  out.error = std::numeric_limits<double>::infinity();
  out.exact = true;
  out.note = why;
  checks_.push_back(out);
}

void Report::count(const std::string& what, size_t failures, size_t total) {
  Check out;
  out.output = what;
  out.exact = true;
  out.error = static_cast<double>(failures);
  out.pass = failures == 0;
  out.note = std::to_string(total) + " items compared";
  checks_.push_back(out);
}

bool register_module(const std::string& module, CaseRunner runner) {
  module_runners()[module] = std::move(runner);
  return true;
}

bool register_json(const std::string& file_name, JsonRunner runner) {
  json_runners()[file_name] = std::move(runner);
  return true;
}

std::string shared_dir() { return test::shared_dir(); }

}  // namespace kosmosg::golden

namespace {

using namespace kosmosg::golden;
namespace fs = std::filesystem;

std::string golden_dir() {
  if (const char* env = std::getenv("KOSMOSG_GOLDEN_DIR")) return env;
  return shared_dir() + "/golden";
}

TEST(GoldenParity, EveryCase) {
  torch::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  const std::string root = golden_dir();
  if (!fs::is_directory(root))
    GTEST_SKIP() << KOSMOSG_SKIP_MARKER "golden folder " << root << " not found: set KOSMOSG_GOLDEN_DIR (or KOSMOSG_SHARED_DIR) to run the golden cases";
  const char* filter = std::getenv("KOSMOSG_GOLDEN_FILTER");
  std::printf("golden: computing on %s in %s\n", placement().device.str().c_str(), c10::toString(placement().dtype));
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (!e.is_regular_file()) continue;
    const auto ext = e.path().extension();
    if (ext != ".safetensors" && ext != ".json") continue;
    // manifest.json describes a group; tokenizer/ folders hold data files the cases read.
    if (e.path().filename() == "manifest.json" || e.path().parent_path().filename() == "tokenizer") continue;
    // Matched against the path inside the golden folder, so the folder's own location never matches.
    if (filter && fs::relative(e.path(), root).string().find(filter) == std::string::npos) continue;
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  int passed = 0, failed = 0, skipped = 0;
  for (const auto& path : files) {
    const std::string rel = fs::relative(path, root).string();
    std::string kind;
    Outcome outcome;
    Report report;
    std::vector<std::string> required;
    try {
      if (path.extension() == ".json") {
        kind = path.filename().string();
        auto it = json_runners().find(kind);
        if (it == json_runners().end()) {
          outcome = {"SKIP", "no runner for " + kind};
        } else {
          std::ifstream in(path);
          it->second(path.string(), nlohmann::json::parse(in), report);
          outcome = summarise(report, {});
        }
      } else {
        Case c;
        c.path = path.string();
        c.name = rel;
        c.file = kosmosg::io::SafeTensors::open(c.path);
        const auto& meta = c.file.metadata();
        auto get = [&](const char* key) {
          auto m = meta.find(key);
          return m == meta.end() ? std::string() : m->second;
        };
        c.module = kind = get("module");
        c.call = get("call");
        c.config = get("config").empty() ? nlohmann::json::object()
                                         : kosmosg::io::parse_json(get("config"), rel + " config");
        c.tolerance = get("tolerance").empty() ? nlohmann::json::object()
                                               : kosmosg::io::parse_json(get("tolerance"), rel + " tolerance");
        auto it = module_runners().find(c.module);
        if (it == module_runners().end()) {
          outcome = {"SKIP", "module '" + c.module + "' not implemented"};
        } else {
          required = c.outputs();
          it->second(c, report);
          outcome = summarise(report, required);
        }
      }
    } catch (const std::exception& e) {
      outcome = {"FAIL", std::string("exception: ") + e.what()};
    }
    std::printf("%-4s  %-48s  %-40s  %s\n", outcome.status.c_str(), rel.c_str(), kind.c_str(),
                outcome.detail.c_str());
    std::fflush(stdout);
    if (outcome.status == "PASS") ++passed;
    if (outcome.status == "FAIL") ++failed;
    if (outcome.status == "SKIP") ++skipped;
    EXPECT_NE(outcome.status, "FAIL") << rel << ": " << outcome.detail;
  }
  std::printf("golden: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
  EXPECT_GT(files.size(), 0u) << "no golden cases found under " << root;
}

}  // namespace
