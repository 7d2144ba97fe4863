#include <gtest/gtest.h>

#include "support.h"
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "kosmosg/io/image.h"

namespace {

using kosmosg::test::run_cli;
using kosmosg::test::official_fixture;

namespace fs = std::filesystem;

using kosmosg::test::shared_dir;

using Result = kosmosg::test::CliResult;

// One converted copy of the official tiny checkpoint for the whole suite.
class CliKosmosG : public ::testing::Test {
 protected:
  void SetUp() override { KOSMOSG_REQUIRE_SHARED_DATA(); }
  static void SetUpTestSuite() {
    KOSMOSG_REQUIRE_SHARED_DATA();
    work_ = fs::temp_directory_path() / ("kosmosg_cli_kg_" + std::to_string(::getpid()));
    fs::remove_all(work_);
    fs::create_directories(work_);
    convert_ = run_cli("convert " + (official_fixture() / "checkpoint_tiny.pt").string() + " " + model() + " --sizes " +
                   (official_fixture() / "sizes.json").string());
  }
  static void TearDownTestSuite() { fs::remove_all(work_); }
  static std::string model() { return (work_ / "model").string(); }
  static std::string image(const char* name) { return (official_fixture() / name).string(); }
  static std::string generate(const std::string& prompt, const std::string& extra, const std::string& out) {
    return "generate --model " + model() + " --prompt '" + prompt + "' --steps 2 --seed 3 --quiet --out " + out + " " + extra;
  }
  void expect_error(const Result& r, const std::string& needle, const fs::path& must_not_exist) {
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.output;
    EXPECT_FALSE(fs::exists(must_not_exist)) << must_not_exist;
  }

  static fs::path work_;
  static Result convert_;
};

fs::path CliKosmosG::work_;
Result CliKosmosG::convert_;

}  // namespace

TEST_F(CliKosmosG, ConvertsAndGeneratesWithOneAndTwoImages) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const auto one = (work_ / "jungle.png").string();
  auto r = run_cli(generate("<i> in the jungle", "--image " + image("image_0_0.png"), one));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto text = kosmosg::io::read_png_text(one);
  EXPECT_EQ(text.at("prompt"), "<i> in the jungle");
  EXPECT_EQ(text.at("images"), image("image_0_0.png"));

  const auto two = (work_ / "painting.png").string();
  r = run_cli(generate("<i> as an oil painting in the style of <i>",
                   "--image " + image("image_1_0.png") + " --image " + image("image_1_1.png") +
                       " --negative 'blurry, low quality'",
                   two));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(kosmosg::io::read_image(two).sizes(), (std::vector<int64_t>{64, 64, 3}));

  const auto text_only = (work_ / "text.png").string();
  r = run_cli(generate("a red apple", "", text_only));
  ASSERT_EQ(r.status, 0) << r.output;
}

// --storage-dtype: the same image within the weights' rounding; for float32 compute only.
TEST_F(CliKosmosG, BlockStorageInHalfPrecision) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const auto full = (work_ / "storage_float32.png").string(), half = (work_ / "storage_bfloat16.png").string();
  auto r = run_cli(generate("<i> in the jungle", "--image " + image("image_0_0.png"), full));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_cli(generate("<i> in the jungle", "--image " + image("image_0_0.png") + " --storage-dtype bfloat16", half));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto a = kosmosg::io::read_image(full).to(at::kFloat), b = kosmosg::io::read_image(half).to(at::kFloat);
  EXPECT_LT((a - b).abs().mean().item<double>(), 4.0);
  const auto refused = (work_ / "storage_refused.png").string();
  expect_error(run_cli(generate("<i> in the jungle", "--image " + image("image_0_0.png") +
                                                     " --storage-dtype bfloat16 --dtype bfloat16", refused)),
               "--dtype alone", refused);
  expect_error(run_cli(generate("<i> in the jungle", "--image " + image("image_0_0.png") + " --storage-dtype int8", refused)),
               "--storage-dtype 'int8'", refused);
}

TEST_F(CliKosmosG, PlaceholderCountMismatch) {
  expect_error(run_cli(generate("<i> next to <i>", "--image " + image("image_0_0.png"), (work_ / "x.png").string())),
               "2 <i> placeholders but 1 image", work_ / "x.png");
}

TEST_F(CliKosmosG, PromptLongerThanThePositions) {
  std::string prompt = "<i>";
  for (int i = 0; i < 200; ++i) prompt += " word";
  expect_error(run_cli(generate(prompt, "--image " + image("image_0_0.png"), (work_ / "long.png").string())),
               "positions allow", work_ / "long.png");
}

TEST_F(CliKosmosG, CorruptImage) {
  const auto bad = work_ / "broken.png";
  std::ofstream(bad, std::ios::binary) << "\x89PNG\r\n\x1a\n not really";
  expect_error(run_cli(generate("<i> in the snow", "--image " + bad.string(), (work_ / "y.png").string())),
               bad.string(), work_ / "y.png");
}

TEST_F(CliKosmosG, MissingImage) {
  expect_error(run_cli(generate("<i> in the snow", "--image /nonexistent/dog.jpg", (work_ / "z.png").string())),
               "/nonexistent/dog.jpg", work_ / "z.png");
}

TEST_F(CliKosmosG, ImagesNeedAKosmosGFolder) {
  expect_error(run_cli("generate --model " + shared_dir() + "/fixtures/tiny-sd15 --prompt '<i>' --image " +
                   image("image_0_0.png") + " --out " + (work_ / "w.png").string()),
               "Kosmos-G", work_ / "w.png");
}

TEST_F(CliKosmosG, ConvertRefusesWhatIsNotAFairseqCheckpoint) {
  const auto out = work_ / "from_safetensors";
  expect_error(run_cli("convert " + (official_fixture() / "expected.safetensors").string() + " " + out.string() + " --tokenizer " +
                   official_fixture().string()),
               "expected.safetensors", out);
}

TEST_F(CliKosmosG, ConvertNeedsTheTokenizerFiles) {
  const auto out = work_ / "no_tokenizer";
  expect_error(run_cli("convert " + (official_fixture() / "checkpoint_tiny.pt").string() + " " + out.string() + " --tokenizer " +
                   work_.string()),
               "sentencepiece.bpe.model", out);
  expect_error(run_cli("convert " + (official_fixture() / "checkpoint_tiny.pt").string() + " " + out.string() + " --tokenizer " +
                   work_.string()),
               "give the --tokenizer", out);
}

// --version reports what a bug report needs: versions, CUDA and GPUs, BLAS, threads.
TEST(CliVersion, NamesLibTorchCudaBlasAndThreads) {
  const auto r = run_cli("--version");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* part : {"kosmosg 0.1.0", "LibTorch ", "CUDA: ", "BLAS: ", "oneDNN: ", "threads: "})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << " in " << r.output;
}
