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
#include "kosmosg/io/image.h"

namespace {

using kosmosg::test::run_cli;

namespace fs = std::filesystem;

using kosmosg::test::shared_dir;

using Result = kosmosg::test::CliResult;

Result run(const std::string& args) { return run_cli(args); }

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
  KOSMOSG_REQUIRE_SHARED_DATA();
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
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto model = copy_model();
  auto weights = model / "unet" / "diffusion_pytorch_model.safetensors";
  fs::resize_file(weights, fs::file_size(weights) / 2);
  expect_error(run(generate(model.string(), "", (work / "x.png").string())), "diffusion_pytorch_model.safetensors");
}

TEST_F(CliGenerate, CorruptWeightsHeader) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto model = copy_model();
  std::ofstream(model / "vae" / "diffusion_pytorch_model.safetensors", std::ios::binary) << "garbage that is not safetensors";
  expect_error(run(generate(model.string(), "", (work / "x.png").string())), "vae");
}

TEST_F(CliGenerate, ConfigAndWeightsDisagree) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto model = copy_model();
  auto config = kosmosg::io::read_json((model / "unet" / "config.json").string());
  config["block_out_channels"] = {16, 16, 32, 64};
  std::ofstream(model / "unet" / "config.json") << config.dump(2);
  expect_error(run(generate(model.string(), "", (work / "x.png").string())), "expects");
}

TEST_F(CliGenerate, SizeNotMultipleOf8) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  expect_error(run(generate(fixture(), "--size 60x64", (work / "x.png").string())), "multiple of 8");
}

TEST_F(CliGenerate, SizeAbsurd) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  expect_error(run(generate(fixture(), "--size 100000x64", (work / "x.png").string())), "100000");
}

TEST_F(CliGenerate, SizeMalformed) {
  expect_error(run(generate(fixture(), "--size big", (work / "x.png").string())), "WIDTHxHEIGHT");
}

TEST_F(CliGenerate, StepsBelowOne) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  expect_error(run("generate --model " + fixture() + " --prompt a --steps 0 --out " + (work / "x.png").string()),
               "--steps");
}

TEST_F(CliGenerate, UnknownSampler) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  expect_error(run(generate(fixture(), "--sampler heun9", (work / "x.png").string())), "heun9");
}

TEST_F(CliGenerate, UnwritableOutput) {
  expect_error(run(generate(fixture(), "", (work / "no" / "such" / "dir" / "x.png").string())), "does not exist");
}

// generation.json: the model folder's own defaults for generate; options given on the command
// line win. The fixture's UNet is made for 64x64 and the built-in defaults are 25 dpmpp-2m steps
// at guidance 7.5 without a negative prompt.
TEST_F(CliGenerate, GenerationJsonSetsTheDefaultsAndOptionsWin) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto model = copy_model();
  std::ofstream(model / "generation.json")
      << R"({"size": "32x32", "steps": 3, "guidance": 5.0, "sampler": "euler", "negative": "blurry"})";
  const std::string base = "generate --model " + model.string() + " --prompt 'a cat' --seed 3 --quiet --out ";
  auto r = run(base + (work / "defaults.png").string());
  ASSERT_EQ(r.status, 0) << r.output;
  auto text = kosmosg::io::read_png_text((work / "defaults.png").string());
  EXPECT_EQ(text["size"], "32x32");
  EXPECT_EQ(text["steps"], "3");
  EXPECT_EQ(text["guidance"], "5");
  EXPECT_EQ(text["sampler"], "euler");
  EXPECT_EQ(text["negative_prompt"], "blurry");
  cv::Mat image = cv::imread((work / "defaults.png").string());
  EXPECT_EQ(image.cols, 32);
  EXPECT_EQ(image.rows, 32);

  r = run(base + (work / "options.png").string() + " --size 48x40 --steps 2 --guidance 3 --sampler ddim --negative sharp");
  ASSERT_EQ(r.status, 0) << r.output;
  text = kosmosg::io::read_png_text((work / "options.png").string());
  EXPECT_EQ(text["size"], "48x40");
  EXPECT_EQ(text["steps"], "2");
  EXPECT_EQ(text["guidance"], "3");
  EXPECT_EQ(text["sampler"], "ddim");
  EXPECT_EQ(text["negative_prompt"], "sharp");
  EXPECT_EQ(cv::imread((work / "options.png").string()).cols, 48);

  // Every key is optional: the others keep the built-in defaults.
  std::ofstream(model / "generation.json") << R"({"steps": 2})";
  r = run(base + (work / "steps.png").string());
  ASSERT_EQ(r.status, 0) << r.output;
  text = kosmosg::io::read_png_text((work / "steps.png").string());
  EXPECT_EQ(text["steps"], "2");
  EXPECT_EQ(text["size"], "64x64");
  EXPECT_EQ(text["sampler"], "dpmpp-2m");
  EXPECT_EQ(text["guidance"], "7.5");
}

TEST_F(CliGenerate, GenerationJsonErrorsNameTheFileAndKey) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto model = copy_model();
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"step": 20})", "'step'"},          {R"({"steps": "20"})", "'steps'"},
      {R"({"steps": 2.5})", "'steps'"},       {R"({"guidance": true})", "'guidance'"},
      {R"({"size": 64})", "'size'"},          {R"({"size": "big"})", "'size'"},
      {R"({"negative": null})", "'negative'"}, {R"(["steps"])", "JSON object"},
      // Values are checked when the image is made, and still named as the file's.
      {R"({"steps": 0})", "generation.json's steps 0"}, {R"({"sampler": "heun9"})", "generation.json's sampler"},
  };
  for (const auto& [json, needle] : bad) {
    SCOPED_TRACE(json);
    std::ofstream(model / "generation.json") << json;
    const auto r = run("generate --model " + model.string() + " --prompt 'a cat' --quiet --out " + (work / "x.png").string());
    expect_error(r, (model / "generation.json").string());
    EXPECT_NE(r.output.find(needle), std::string::npos) << r.output;
  }
}

TEST_F(CliGenerate, HelpNamesGenerationJson) {
  EXPECT_NE(run("generate --help").output.find("generation.json"), std::string::npos);
}
