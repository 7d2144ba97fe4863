// `kosmosg train` end to end on the converted official tiny checkpoint and data the test makes:
// each stage runs and learns, resume is exact, a killed run keeps its last checkpoint, bad
// samples are skipped and counted, and an instruct output generates.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <torch/version.h>

#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/train/checkpoint.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;
using kosmosg::test::run_cli;
using kosmosg::test::shared_dir;
using kosmosg::test::write_square;
using kosmosg::test::read_metrics;

fs::path fixture(const char* name) { return fs::path(shared_dir()) / "fixtures" / name; }



double mean_loss(const std::vector<kosmosg::io::Json>& m, size_t begin, size_t end) {
  double s = 0;
  for (size_t i = begin; i < end; ++i) s += m[i].at("loss").get<double>();
  return s / static_cast<double>(end - begin);
}

class CliTrain : public ::testing::Test {
 protected:
  void SetUp() override { KOSMOSG_REQUIRE_SHARED_DATA(); }
  static void SetUpTestSuite() {
    KOSMOSG_REQUIRE_SHARED_DATA();
    work_ = fs::temp_directory_path() / ("kosmosg_cli_train_" + std::to_string(::getpid()));
    fs::remove_all(work_);
    fs::create_directories(work_ / "data");
    convert_ = run_cli("convert " + (fixture("kosmosg-official-tiny") / "checkpoint_tiny.pt").string() + " " + model() +
                       " --sizes " + (fixture("kosmosg-official-tiny") / "sizes.json").string());
    // The align stage's frozen teacher: the tiny SD1.5 text encoder (32 wide, as this aligner).
    for (const char* part : {"text_encoder", "tokenizer"})
      fs::copy(fixture("tiny-sd15") / part, fs::path(model()) / part, fs::copy_options::recursive);
    const fs::path d = work_ / "data";
    write_square(d / "red.png", {220, 30, 30}, {255, 255, 255});
    write_square(d / "blue.png", {30, 30, 220}, {255, 255, 255});
    write_square(d / "red_on_green.png", {220, 30, 30}, {30, 200, 30});
    write_square(d / "blue_on_yellow.png", {30, 30, 220}, {230, 220, 40});
    std::ofstream(d / "lm.jsonl") << R"({"text": "a red square on a white background"})" "\n"
                                  << R"({"prompt": "<i> a blue square", "images": ["blue.png"]})" "\n"
                                  << R"({"text": "a blue square on a yellow background"})" "\n";
    std::ofstream(d / "align.jsonl") << R"({"text": "a red square on a green background"})" "\n"
                                     << R"({"text": "a blue square on a yellow background"})" "\n";
    std::ofstream(d / "instruct.jsonl")
        << R"({"prompt": "<i> on a green background", "images": ["red.png"], "target": "red_on_green.png"})" "\n"
        << R"({"prompt": "<i> on a yellow background", "images": ["blue.png"], "target": "blue_on_yellow.png"})" "\n"
        << R"({"prompt": "a red square on a green background", "target": "red_on_green.png"})" "\n";
    std::ofstream(d / "broken.jsonl")
        << R"({"prompt": "<i> on a green background", "images": ["missing.png"], "target": "red_on_green.png"})" "\n"
        << R"({"prompt": "<i> on a yellow background", "images": ["blue.png"], "target": "blue_on_yellow.png"})" "\n"
        << R"({"prompt": "<i> on a green background", "images": ["red.png"], "target": "red_on_green.png"})" "\n"
        << R"({"prompt": "<i> on a yellow background", "images": ["blue.png"], "target": "blue_on_yellow.png"})" "\n"
        << R"({"prompt": "a red square on a green background", "target": "red_on_green.png"})" "\n";
  }
  static void TearDownTestSuite() { fs::remove_all(work_); }

  static std::string model() { return (work_ / "model").string(); }
  static std::string data(const char* name) { return (work_ / "data" / name).string(); }
  static std::string train(const std::string& stage, const std::string& data, const fs::path& out,
                           const std::string& extra) {
    return "train --stage " + stage + " --model " + model() + " --data " + data + " --out " + out.string() +
           " --threads 1 --quiet " + extra;
  }

  static fs::path work_;
  static kosmosg::test::CliResult convert_;
};

fs::path CliTrain::work_;
kosmosg::test::CliResult CliTrain::convert_;

TEST_F(CliTrain, EachStageLearnsAndWritesAModelFolder) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const std::vector<std::pair<std::string, std::string>> stages = {
      {"lm", data("lm.jsonl")}, {"align", data("align.jsonl")}};
  for (const auto& [stage, manifest] : stages) {
    const fs::path out = work_ / ("out_" + stage);
    auto r = run_cli(train(stage, manifest, out, "--steps 40 --batch-size 2 --lr 3e-3 --warmup 2 --seed 1"));
    ASSERT_EQ(r.status, 0) << r.output;
    const auto m = read_metrics(out);
    ASSERT_EQ(m.size(), 40u);
    EXPECT_LT(mean_loss(m, 35, 40), 0.5 * mean_loss(m, 0, 5)) << stage;
    EXPECT_TRUE(fs::exists(out / "kosmosg" / "model.safetensors"));
    EXPECT_TRUE(fs::exists(out / "checkpoints" / "latest"));
  }
  // The align output is the next stage's starting point.
  const auto weights = kosmosg::io::SafeTensors::open((work_ / "out_align" / "kosmosg" / "model.safetensors").string());
  EXPECT_TRUE(weights.contains("aligner.decoder_query"));
  EXPECT_TRUE(weights.contains("aligner.encoder_query"));
}

TEST_F(CliTrain, InstructOutputGenerates) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const fs::path out = work_ / "out_instruct";
  auto r = run_cli(train("instruct", data("instruct.jsonl"), out,
                         "--steps 4 --batch-size 2 --seed 2 --sample-every 2 --sample-steps 2 --sample-prompt "
                         "'<i> on a green background' --sample-image " + data("red.png")));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(read_metrics(out).size(), 4u);
  EXPECT_TRUE(fs::exists(out / "samples" / "update_2_0.png"));
  EXPECT_TRUE(fs::exists(out / "samples" / "update_4_0.png"));
  const fs::path png = work_ / "generated.png";
  r = run_cli("generate --model " + out.string() + " --prompt '<i> on a green background' --image " +
              data("red.png") + " --steps 2 --seed 1 --quiet --out " + png.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(png));
}

TEST_F(CliTrain, PrecisionPolicy) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  kosmosg::test::CliResult r;
#if TORCH_VERSION_MAJOR >= 2
  std::vector<double> first;
  for (const char* precision : {"float32", "bfloat16", "memory-efficient-bf16"}) {
    const fs::path out = work_ / (std::string("precision_") + precision);
    r = run_cli(train("instruct", data("instruct.jsonl"), out,
                      "--steps 2 --batch-size 2 --seed 4 --precision " + std::string(precision)));
    ASSERT_EQ(r.status, 0) << r.output;
    const auto m = read_metrics(out);
    ASSERT_EQ(m.size(), 2u);
    EXPECT_EQ(m[0].at("precision"), precision);
    first.push_back(m[0].at("loss").get<double>());
  }
  EXPECT_NEAR(first[1], first[0], 0.05 * first[0]);
  EXPECT_NEAR(first[2], first[0], 0.05 * first[0]);
  // Memory-efficient: the checkpoint and the exported model keep the weights in bfloat16.
  const fs::path half = work_ / "precision_memory-efficient-bf16";
  for (const fs::path& file : {half / "checkpoints" / "step_00000002" / "trainable.safetensors",
                               half / "kosmosg" / "model.safetensors"}) {
    const auto weights = kosmosg::io::SafeTensors::open(file.string());
    EXPECT_EQ(weights.get("img_connector.dense.weight").scalar_type(), at::kBFloat16) << file;
  }
  r = run_cli("generate --model " + half.string() + " --prompt '<i> on a green background' --image " + data("red.png") +
              " --steps 2 --seed 1 --quiet --out " + (work_ / "half.png").string());
  EXPECT_EQ(r.status, 0) << r.output;
#else
  auto bf16 = run_cli(train("instruct", data("instruct.jsonl"), work_ / "bf16_cpu", "--steps 1 --precision bfloat16"));
  EXPECT_NE(bf16.status, 0);
  EXPECT_NE(bf16.output.find("LibTorch 2.x"), std::string::npos) << bf16.output;
#endif
  for (const char* fp16 : {"float16", "memory-efficient-fp16"}) {
    r = run_cli(train("align", data("align.jsonl"), work_ / "fp16_cpu", std::string("--steps 1 --precision ") + fp16));
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.output.find("CUDA"), std::string::npos) << r.output;
  }
  r = run_cli(train("align", data("align.jsonl"), work_ / "fp8", "--steps 1 --precision float8"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("float8"), std::string::npos) << r.output;
}

TEST_F(CliTrain, ResumeIsExact) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  std::vector<std::pair<std::string, std::string>> runs = {{"0", "float32"}, {"2", "float32"}};
#if TORCH_VERSION_MAJOR >= 2
  runs.emplace_back("0", "memory-efficient-bf16");
#endif
  for (const auto& [workers, precision] : runs) {
    const fs::path whole = work_ / ("whole_" + workers + precision), split = work_ / ("split_" + workers + precision);
    const std::string common =
        "--batch-size 2 --seed 5 --warmup 1 --lr 1e-3 --workers " + workers + " --precision " + precision;
    auto r = run_cli(train("instruct", data("instruct.jsonl"), whole, "--steps 6 " + common));
    ASSERT_EQ(r.status, 0) << r.output;
    r = run_cli(train("instruct", data("instruct.jsonl"), split, "--steps 3 " + common));
    ASSERT_EQ(r.status, 0) << r.output;
    r = run_cli(train("instruct", data("instruct.jsonl"), split, "--steps 6 --resume " + common));
    ASSERT_EQ(r.status, 0) << r.output;
    const auto a = kosmosg::io::SafeTensors::open((whole / "checkpoints" / "step_00000006" / "trainable.safetensors").string());
    const auto b = kosmosg::io::SafeTensors::open((split / "checkpoints" / "step_00000006" / "trainable.safetensors").string());
    ASSERT_EQ(a.keys(), b.keys());
    for (const auto& k : a.keys()) EXPECT_TRUE(at::equal(a.get(k), b.get(k))) << workers << " " << precision << " " << k;
    const auto ma = read_metrics(whole), mb = read_metrics(split);
    ASSERT_EQ(mb.size(), 6u);
    for (size_t i = 0; i < 6; ++i) EXPECT_EQ(ma[i].at("loss"), mb[i].at("loss")) << i;
  }
}

TEST_F(CliTrain, AKilledRunKeepsItsLastCheckpoint) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const fs::path out = work_ / "killed";
  const std::string cmd = std::string(KOSMOSG_CLI_PATH) + " " +
                          train("align", data("align.jsonl"), out, "--steps 100000 --save-every 1 --batch-size 2");
  auto latest_pointer = [&] {
    std::ifstream in(out / "checkpoints" / "latest");
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  int kills = 0;
  for (int delay_ms : {0, 230, 410, 630, 870}) {
    const std::string saved_before = latest_pointer();
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string line = "exec " + cmd + (kills == 0 ? "" : " --resume") + " >/dev/null 2>&1";
      execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    // Start-up takes seconds more when other tests share the cores: wait for this run's first
    // save, then kill it at a different moment of its save-every-update loop each time.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    bool exited = false;
    while (!exited && latest_pointer() == saved_before && std::chrono::steady_clock::now() < deadline) {
      exited = ::waitpid(pid, nullptr, WNOHANG) == pid;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!exited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    ++kills;
    if (!fs::exists(out / "checkpoints" / "latest")) continue;  // killed before its first save
    kosmosg::train::CheckpointManager manager(out.string(), 3);
    auto latest = manager.load_latest();
    ASSERT_TRUE(latest.has_value());
    EXPECT_FALSE(latest->trainable.empty());
    EXPECT_NO_THROW(kosmosg::io::SafeTensors::open((out / "kosmosg" / "model.safetensors").string()));
  }
  ASSERT_TRUE(fs::exists(out / "checkpoints" / "latest")) << "no run lived long enough to save";
  const auto before = kosmosg::train::CheckpointManager(out.string(), 3).load_latest()->state;
  const int64_t done = before.at("trainer").at("num_updates").get<int64_t>();
  auto r = run_cli(train("align", data("align.jsonl"), out,
                         "--steps " + std::to_string(done + 2) + " --save-every 1 --batch-size 2 --resume"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(kosmosg::train::CheckpointManager(out.string(), 3).load_latest()->state.at("trainer").at("num_updates"),
            done + 2);
  // Updates logged after the last checkpoint of a killed run are logged once, by the run that redid them.
  const auto m = read_metrics(out);
  ASSERT_EQ(m.size(), static_cast<size_t>(done + 2));
  for (size_t i = 0; i < m.size(); ++i) EXPECT_EQ(m[i].at("update").get<int64_t>(), static_cast<int64_t>(i + 1));
}

TEST_F(CliTrain, BadSamplesAreSkippedAndCounted) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const fs::path out = work_ / "broken";
  auto r = run_cli(train("instruct", data("broken.jsonl"), out, "--steps 4 --batch-size 2 --seed 3"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto m = read_metrics(out);
  ASSERT_EQ(m.size(), 4u);
  EXPECT_GE(m.back().at("samples_failed").get<int64_t>(), 1);

  // Records the align stage leaves out by design (images) are filtered, not failures: a mixed
  // manifest trains.
  const fs::path mixed = work_ / "mixed_align";
  r = run_cli(train("align", data("instruct.jsonl"), mixed, "--steps 3 --batch-size 1 --seed 3"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto ma = read_metrics(mixed);
  ASSERT_EQ(ma.size(), 3u);
  EXPECT_EQ(ma.back().at("samples_failed").get<int64_t>(), 0);
  EXPECT_GE(ma.back().at("samples_filtered").get<int64_t>(), 2);
}

TEST_F(CliTrain, RefusesWhatCannotWork) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  auto r = run_cli("train --stage instruct --model /nonexistent --data " + data("instruct.jsonl") + " --out " +
                   (work_ / "refused").string() + " --steps 1");
  EXPECT_NE(r.status, 0);
  // Library errors about a setting are reported under the option's name.
  EXPECT_NE(r.output.find("--model /nonexistent is not a folder"), std::string::npos) << r.output;
  r = run_cli(train("lm", data("lm.jsonl"), work_ / "no_batch", "--steps 1 --batch-size 0"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--batch-size 0 must be at least 1"), std::string::npos) << r.output;
  r = run_cli(train("lm", data("lm.jsonl"), work_ / "twice", "--steps 1"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_cli(train("lm", data("lm.jsonl"), work_ / "twice", "--steps 1"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("continue it with --resume"), std::string::npos) << r.output;
  r = run_cli(train("align", data("missing.jsonl"), work_ / "refused2", "--steps 1"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("missing.jsonl"), std::string::npos) << r.output;
}

}  // namespace
