#pragma once
// What every test needs from its surroundings: the shared test data and the CLI binary.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include <initializer_list>
#include <set>
#include <sstream>
#include <unistd.h>

#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/pickle.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/train/stage.h"

namespace kosmosg::test {

// The project's shared/ folder (fixtures, golden data): $KOSMOSG_SHARED_DIR or the build default.
inline std::string shared_dir() {
  if (const char* env = std::getenv("KOSMOSG_SHARED_DIR")) return env;
  return KOSMOSG_DEFAULT_SHARED_DIR;
}

// shared_dir() as a path, for joining with `/`.
inline std::filesystem::path shared_path() { return shared_dir(); }

// The official Kosmos-G checkpoint fixture (shared/fixtures/kosmosg-official-tiny).
inline std::filesystem::path official_fixture() { return shared_path() / "fixtures" / "kosmosg-official-tiny"; }

// Whether the shared folder is there: a clone on its own has no ../shared beside it.
inline bool shared_data_present() {
  return std::filesystem::is_directory(shared_dir() + "/fixtures") &&
         std::filesystem::is_directory(shared_dir() + "/golden");
}

}  // namespace kosmosg::test

// Starts every deliberate skip's message: ctest reports only these as skipped, so a test suite
// whose set-up failed (which GoogleTest also prints as skipped) still fails.
#define KOSMOSG_SKIP_MARKER "[kosmosg: skipped] "

// Skips the running test (reported by name as skipped by ctest) when it needs the shared folder
// and that is absent, naming the variable that points at it. With ../shared present it does nothing.
// Call it in the test or in SetUp: in SetUpTestSuite it only spares the suite's set-up, since
// GoogleTest 1.12 still runs the tests of a suite skipped there.
#define KOSMOSG_REQUIRE_SHARED_DATA()                                                                    \
  if (!::kosmosg::test::shared_data_present())                                                           \
  GTEST_SKIP() << KOSMOSG_SKIP_MARKER "needs the project's shared test data: " << ::kosmosg::test::shared_dir() \
               << " (fixtures/, golden/) not found; set KOSMOSG_SHARED_DIR to the folder that holds them"

namespace kosmosg::test {

// Writes the LoRA of golden case `name` (e.g. "lora_kohya_unet_sd15_tiny", its lora.* tensors
// without the prefix) as a standalone LoRA file at `path`, as users have them.
inline std::string write_golden_lora(const std::string& name, const std::string& path) {
  const auto golden = io::SafeTensors::open(shared_dir() + "/golden/diffusers/" + name + ".safetensors");
  io::save_safetensors(path, golden.tensors("lora."));
  return path;
}

// Writes the ControlNet of the golden case controlnet_sd15_tiny as a diffusers ControlNetModel
// folder at `dir` (it fits the tiny-sd15 and Kosmos-G tiny UNets) and returns `dir`. Its random
// weights make it nearly blind to the control image; `cond_gain` > 1 multiplies the control-image
// embedding's parameters so that the image matters.
inline std::string write_tiny_controlnet(const std::string& dir, double cond_gain = 1.0) {
  const auto golden = io::SafeTensors::open(shared_dir() + "/golden/diffusers/controlnet_sd15_tiny.safetensors");
  auto config = io::parse_json(golden.metadata().at("config"), "golden config").at("controlnet");
  config["_class_name"] = "ControlNetModel";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << config.dump(2);
  auto weights = golden.tensors("param.controlnet.");
  for (auto& [name, tensor] : weights)
    if (name.rfind("controlnet_cond_embedding.", 0) == 0) tensor = tensor.mul(cond_gain);
  io::save_safetensors(dir + "/diffusion_pytorch_model.safetensors", weights);
  return dir;
}

// A golden training case's model (shared/golden/kosmosg/train_*): its config and param.* weights,
// with the UNet, VAE and scheduler when the case has them.
inline train::StageModels golden_stage_models(const io::SafeTensors& file) {
  const auto model = io::parse_json(file.metadata().at("config"), file.path()).at("model");
  train::StageModels m;
  m.kosmosg_config = model;
  m.kosmosg = file.tensors("param.");
  if (model.contains("unet")) {
    m.unet_config = model.at("unet");
    m.vae_config = model.at("vae");
    m.scheduler_config = model.at("noise_scheduler");
    m.unet = file.tensors("param.diffusion_unet.unet.");
    m.vae = file.tensors("param.vae.vae.");
  }
  return m;
}

// The message of the kosmosg::Error that `f` throws; a test failure and "" when it throws none.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no kosmosg::Error was thrown";
  return "";
}

// Expects `f` to throw a kosmosg::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

struct CliResult {
  int status;          // exit code, -1 when killed
  std::string output;  // stdout and stderr together
};

// Runs a shell command and captures what it prints.
inline CliResult run_command(const std::string& command) {
  CliResult r{-1, ""};
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) r.output.append(buf.data(), n);
  const int raw = pclose(pipe);
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return r;
}

// Runs the kosmosg binary with `args` (shell words) and captures what it prints.
inline CliResult run_cli(const std::string& args) { return run_command(std::string(KOSMOSG_CLI_PATH) + " " + args); }

// A solid square of `fg` on `bg`, side 64 (a training image for the CLI tests).
inline void write_square(const std::filesystem::path& path, std::array<uint8_t, 3> fg, std::array<uint8_t, 3> bg) {
  auto img = at::empty({64, 64, 3}, at::kByte);
  for (int c = 0; c < 3; ++c) {
    img.select(2, c).fill_(bg[c]);
    img.slice(0, 16, 48).slice(1, 16, 48).select(2, c).fill_(fg[c]);
  }
  io::write_png(path.string(), img);
}

// The lines of a training run's OUT/metrics.jsonl.
inline std::vector<io::Json> read_metrics(const std::filesystem::path& out) {
  std::vector<io::Json> lines;
  std::ifstream in(out / "metrics.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(io::parse_json(line, "metrics"));
  return lines;
}

// The root folder <tmp>/kosmosg_<tag>_<pid> of a test program's files, created if missing and
// removed when the program exits; the process id keeps concurrently running tests apart.
inline std::filesystem::path temp_root(const std::string& tag) {
  struct Roots {
    std::set<std::filesystem::path> paths;
    ~Roots() {
      for (const auto& p : paths) {
        std::error_code ec;
        std::filesystem::remove_all(p, ec);
      }
    }
  };
  static Roots roots;
  const auto root = std::filesystem::temp_directory_path() / ("kosmosg_" + tag + "_" + std::to_string(::getpid()));
  roots.paths.insert(root);
  std::filesystem::create_directories(root);
  return root;
}

// A fresh, empty folder per call, named `name`, under temp_root(tag).
inline std::filesystem::path temp_dir(const std::string& tag, const std::string& name) {
  static int calls = 0;
  const auto dir = temp_root(tag) / std::to_string(calls++) / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// The path of `file` in temp_root(tag): the same path on every call (the file is not made).
inline std::filesystem::path temp_file(const std::string& tag, const std::string& file) {
  return temp_root(tag) / file;
}

// Writes `text` to `path` byte for byte, making the folders it needs.
inline void write_text(const std::filesystem::path& path, const std::string& text) {
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

// The whole file at `path` (empty when it cannot be read).
inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// ||a - b|| / ||b||, computed in double.
inline double relative_l2(const at::Tensor& a, const at::Tensor& b) {
  const auto x = a.to(at::kDouble), y = b.to(at::kDouble);
  return ((x - y).norm() / y.norm()).item<double>();
}

// The token ids of `parts`, one after another.
inline std::vector<int64_t> concat(std::initializer_list<std::vector<int64_t>> parts) {
  std::vector<int64_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Unpickles the bytes of `bytes`.
inline io::PickleValue unpickle(const std::string& bytes, const io::UnpickleOptions& options = {}) {
  return io::unpickle(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), options);
}

}  // namespace kosmosg::test
