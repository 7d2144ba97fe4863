#include <gtest/gtest.h>

#include "support.h"
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "kosmosg/io/config.h"

namespace {

namespace fs = std::filesystem;

using kosmosg::test::shared_dir;

using Result = kosmosg::test::CliResult;

Result run(const std::string& args) { return kosmosg::test::run_cli(args); }

class CliGenerate : public ::testing::Test {
 protected:
  void SetUp() override {
    work = fs::temp_directory_path() / ("kosmosg_cli_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(work);
    fs::create_directories(work);
  }
  void TearDown() override { fs::remove_all(work); }

  // A writable copy of the tiny SD1.5 fixture to damage.
  fs::path copy_model() {
    fs::path dst = work / "model";
    fs::copy(fixture(), dst, fs::copy_options::recursive);
    for (const auto& e : fs::recursive_directory_iterator(dst))
      fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
    fs::permissions(dst, fs::perms::owner_write, fs::perm_options::add);
    return dst;
  }
  static std::string fixture() { return shared_dir() + "/fixtures/tiny-sd15"; }
  std::string generate(const std::string& model, const std::string& extra, const std::string& out) {
    return "generate --model " + model + " --prompt 'a cat' --steps 2 --quiet --out " + out + " " + extra;
  }
  void expect_error(const Result& r, const std::string& needle) {
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("error"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.output;
    for (const auto& e : fs::recursive_directory_iterator(work))
      EXPECT_NE(e.path().extension(), ".png") << "left behind: " << e.path();
  }

  fs::path work;
};

}  // namespace

TEST_F(CliGenerate, WritesPngsWithSettingsAndSeedsReproduce) {
  const auto out = (work / "cat.png").string();
  auto r = run(generate(fixture(), "--seed 1 --num-images 2 --size 64x64", out));
  ASSERT_EQ(r.status, 0) << r.output;
  ASSERT_TRUE(fs::exists(work / "cat_0.png")) << r.output;
  ASSERT_TRUE(fs::exists(work / "cat_1.png"));
  std::ifstream a(work / "cat_0.png", std::ios::binary), b(work / "cat_1.png", std::ios::binary);
  std::string bytes_a((std::istreambuf_iterator<char>(a)), {}), bytes_b((std::istreambuf_iterator<char>(b)), {});
  EXPECT_NE(bytes_a, bytes_b);
  for (const char* key : {"prompt", "negative_prompt", "seed", "steps", "guidance", "sampler", "model"})
    EXPECT_NE(bytes_a.find(key), std::string::npos) << key;

  auto again = run(generate(fixture(), "--seed 2 --size 64x64", (work / "again.png").string()));
  ASSERT_EQ(again.status, 0) << again.output;
  // Image i of a run uses seed+i, so a single image at seed 2 repeats image 1 of the seed-1 run.
  cv::Mat first = cv::imread((work / "cat_1.png").string()), second = cv::imread((work / "again.png").string());
  ASSERT_FALSE(first.empty());
  ASSERT_EQ(first.size(), second.size());
  EXPECT_EQ(cv::norm(first, second, cv::NORM_INF), 0.0);
}

TEST_F(CliGenerate, HelpListsTheOptions) {
  auto r = run("generate --help");
  EXPECT_EQ(r.status, 0);
  for (const char* opt : {"--prompt", "--negative", "--steps", "--guidance", "--sampler", "--seed", "--size",
                          "--num-images", "--out", "--threads", "--device", "--dtype"})
    EXPECT_NE(r.output.find(opt), std::string::npos) << opt;
}

TEST_F(CliGenerate, MissingFolder) {
  expect_error(run(generate((work / "nowhere").string(), "", (work / "x.png").string())), "nowhere");
}

TEST_F(CliGenerate, NotAModelFolder) {
  expect_error(run(generate(work.string(), "", (work / "x.png").string())), "model_index.json");
}

TEST_F(CliGenerate, TruncatedWeights) {
  auto model = copy_model();
  auto weights = model / "unet" / "diffusion_pytorch_model.safetensors";
  fs::resize_file(weights, fs::file_size(weights) / 2);
  expect_error(run(generate(model.string(), "", (work / "x.png").string())), "diffusion_pytorch_model.safetensors");
}

TEST_F(CliGenerate, CorruptWeightsHeader) {
  auto model = copy_model();
  std::ofstream(model / "vae" / "diffusion_pytorch_model.safetensors", std::ios::binary) << "garbage that is not safetensors";
  expect_error(run(generate(model.string(), "", (work / "x.png").string())), "vae");
}

TEST_F(CliGenerate, ConfigAndWeightsDisagree) {
  auto model = copy_model();
  auto config = kosmosg::io::read_json((model / "unet" / "config.json").string());
  config["block_out_channels"] = {16, 16, 32, 64};
  std::ofstream(model / "unet" / "config.json") << config.dump(2);
  expect_error(run(generate(model.string(), "", (work / "x.png").string())), "expects");
}

TEST_F(CliGenerate, SizeNotMultipleOf8) {
  expect_error(run(generate(fixture(), "--size 60x64", (work / "x.png").string())), "multiple of 8");
}

TEST_F(CliGenerate, SizeAbsurd) {
  expect_error(run(generate(fixture(), "--size 100000x64", (work / "x.png").string())), "100000");
}

TEST_F(CliGenerate, SizeMalformed) {
  expect_error(run(generate(fixture(), "--size big", (work / "x.png").string())), "WIDTHxHEIGHT");
}

TEST_F(CliGenerate, StepsBelowOne) {
  expect_error(run("generate --model " + fixture() + " --prompt a --steps 0 --out " + (work / "x.png").string()),
               "--steps");
}

TEST_F(CliGenerate, UnknownSampler) {
  expect_error(run(generate(fixture(), "--sampler heun9", (work / "x.png").string())), "heun9");
}

TEST_F(CliGenerate, UnwritableOutput) {
  expect_error(run(generate(fixture(), "", (work / "no" / "such" / "dir" / "x.png").string())), "does not exist");
}
