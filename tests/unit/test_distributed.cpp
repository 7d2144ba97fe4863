// Data-parallel training on loopback with Gloo: the launcher's environment, two processes that
// train as one process with their combined batch, resume with the same and another number of
// ranks, and the faults a job must survive (a rank killed, a rank hanging, a rendezvous that cannot
// complete), each bounded in time. Every port is picked free on 127.0.0.1.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <sstream>
#include <thread>

#include <torch/version.h>

#include "kosmosg/data/loader.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/text/kosmosg_tokenizer.h"
#include "kosmosg/train/checkpoint.h"
#include "kosmosg/train/distributed.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;
using kosmosg::test::expect_error;
using kosmosg::test::run_cli;
using kosmosg::test::shared_dir;
using kosmosg::test::write_square;
using kosmosg::train::LaunchInfo;

LaunchInfo launch_from(const std::map<std::string, std::string>& env) {
  return LaunchInfo::from_environment([&env](const char* name) -> const char* {
    const auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(LaunchInfo, ReadsTorchrunSlurmAndOpenMpi) {
  const auto none = launch_from({});
  EXPECT_EQ(none.world_size, 1);
  EXPECT_EQ(none.launcher, "none");

  const auto t = launch_from({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                              {"MASTER_ADDR", "10.0.0.5"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(t.launcher, "torchrun");
  EXPECT_EQ(t.rank, 3);
  EXPECT_EQ(t.world_size, 8);
  EXPECT_EQ(t.local_rank, 1);
  EXPECT_EQ(t.local_world_size, 2);
  EXPECT_EQ(t.master_addr, "10.0.0.5");
  EXPECT_EQ(t.master_port, 1234);
  EXPECT_FALSE(t.agent_store);
  EXPECT_EQ(t.restart_count, 0);
  const auto elastic = launch_from({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                    {"TORCHELASTIC_RESTART_COUNT", "3"}});
  EXPECT_TRUE(elastic.agent_store);
  EXPECT_EQ(elastic.restart_count, 3);

  const auto s = launch_from({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "5"},
                              {"SLURM_NTASKS_PER_NODE", "8(x2)"}, {"SLURM_JOB_NODELIST", "gpu[007-008],cpu1"},
                              {"MASTER_PORT", "29600"}});
  EXPECT_EQ(s.launcher, "slurm");
  EXPECT_EQ(s.rank, 5);
  EXPECT_EQ(s.world_size, 16);
  EXPECT_EQ(s.local_rank, 5);
  EXPECT_EQ(s.local_world_size, 8);
  EXPECT_EQ(s.master_addr, "gpu007");
  EXPECT_EQ(s.master_port, 29600);

  const auto m = launch_from({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                              {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  EXPECT_EQ(m.launcher, "openmpi");
  EXPECT_EQ(m.rank, 1);
  EXPECT_EQ(m.world_size, 4);
  EXPECT_EQ(m.master_addr, "127.0.0.1");
}

TEST(LaunchInfo, RefusesInconsistentValues) {
  expect_error([] { launch_from({{"RANK", "2"}, {"WORLD_SIZE", "2"}}); }, {"rank 2", "world size 2"});
  expect_error([] { launch_from({{"RANK", "x"}, {"WORLD_SIZE", "2"}}); }, {"RANK=x"});
  expect_error([] { launch_from({{"RANK", "0"}}); }, {"RANK and WORLD_SIZE"});
  expect_error([] { launch_from({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}); }, {"MASTER_PORT=70000"});
}

TEST(LaunchInfo, FirstSlurmHost) {
  EXPECT_EQ(kosmosg::train::first_slurm_host("node1"), "node1");
  EXPECT_EQ(kosmosg::train::first_slurm_host("node[003-005,007],gpu1"), "node003");
  EXPECT_EQ(kosmosg::train::first_slurm_host("a[1,2]"), "a1");
  EXPECT_EQ(kosmosg::train::first_slurm_host("x1,x2"), "x1");
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    ADD_FAILURE() << "cannot pick a port";
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string slurp(const fs::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// One rank of a local job: the CLI with torchrun's variables, its output in `log`.
pid_t spawn_rank(const std::string& args, int rank, int world, int port, const fs::path& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("RANK", std::to_string(rank).c_str(), 1);
    ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
    ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
    ::setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    const std::string cmd = "exec " + std::string(KOSMOSG_CLI_PATH) + " " + args + " >" + log.string() + " 2>&1";
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

// The exit status of `pid`; -1 when a signal ended it; -2 when it was still running at the deadline
// (it is then killed, so that no test outlives its bound).
int wait_for(pid_t pid, double seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int raw = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &raw, WNOHANG) == pid) return WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &raw, 0);
  return -2;
}

struct JobResult {
  std::vector<int> status;
  std::vector<std::string> logs;
};

// Runs `world` ranks of `args` to completion, each bounded by `seconds`.
JobResult run_job(const std::string& args, int world, const fs::path& logs, double seconds = 120) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r)
    pids.push_back(spawn_rank(args, r, world, port, logs.string() + ".rank" + std::to_string(r)));
  JobResult j;
  for (int r = 0; r < world; ++r) {
    j.status.push_back(wait_for(pids[r], seconds));
    j.logs.push_back(slurp(logs.string() + ".rank" + std::to_string(r)));
  }
  return j;
}

kosmosg::io::TensorMap trained(const fs::path& out) {
  return kosmosg::io::SafeTensors::open((out / "kosmosg" / "model.safetensors").string()).tensors();
}

void expect_same_weights(const fs::path& a, const fs::path& b, double atol) {
  const auto wa = trained(a), wb = trained(b);
  ASSERT_EQ(wa.size(), wb.size());
  for (const auto& [name, t] : wa) {
    ASSERT_TRUE(wb.count(name)) << name;
    const double diff = (t.to(at::kDouble) - wb.at(name).to(at::kDouble)).abs().max().item<double>();
    EXPECT_LE(diff, atol) << name;
  }
}


// Dropout off everywhere: with it, one process and two draw different masks for the same rows.
void zero_dropout(kosmosg::io::Json& j) {
  if (j.is_object()) {
    for (auto& [key, value] : j.items()) {
      if (key.find("dropout") != std::string::npos && value.is_number()) value = 0.0;
      zero_dropout(value);
    }
  } else if (j.is_array()) {
    for (auto& v : j) zero_dropout(v);
  }
}

class DistributedTrain : public ::testing::Test {
 protected:
  void SetUp() override { KOSMOSG_REQUIRE_SHARED_DATA(); }
  static void SetUpTestSuite() {
    KOSMOSG_REQUIRE_SHARED_DATA();
    work_ = fs::temp_directory_path() / ("kosmosg_dist_" + std::to_string(::getpid()));
    fs::remove_all(work_);
    fs::create_directories(work_ / "data");
    const fs::path fixture = fs::path(shared_dir()) / "fixtures";
    convert_ = run_cli("convert " + (fixture / "kosmosg-official-tiny" / "checkpoint_tiny.pt").string() + " " + model() +
                       " --sizes " + (fixture / "kosmosg-official-tiny" / "sizes.json").string());
    if (convert_.status != 0) return;
    for (const char* part : {"text_encoder", "tokenizer"})
      fs::copy(fixture / "tiny-sd15" / part, fs::path(model()) / part, fs::copy_options::recursive);
    const fs::path config = fs::path(model()) / "kosmosg" / "config.json";
    auto json = kosmosg::io::read_json(config.string());
    zero_dropout(json);
    std::ofstream(config) << json.dump(2);

    const fs::path d = work_ / "data";
    const std::vector<std::pair<std::string, std::array<uint8_t, 3>>> colours = {
        {"red", {220, 30, 30}}, {"green", {30, 200, 30}}, {"blue", {30, 30, 220}}, {"yellow", {230, 220, 40}}};
    std::ofstream instruct(d / "instruct.jsonl");
    for (const auto& [fg, fg_rgb] : colours) {
      write_square(d / (fg + ".png"), fg_rgb, {255, 255, 255});
      for (const auto& [bg, bg_rgb] : colours) {
        if (fg == bg) continue;
        write_square(d / (fg + "_on_" + bg + ".png"), fg_rgb, bg_rgb);
        if (instruct_lines_ < 8)
          instruct << R"({"prompt": "<i> on a )" << bg << R"( background", "images": [")" << fg << R"(.png"], "target": ")"
                   << fg << "_on_" << bg << R"(.png"})" "\n";
        else if (instruct_lines_ < 12)
          instruct << R"({"prompt": "a )" << fg << " square on a " << bg << R"( background", "target": ")" << fg << "_on_"
                   << bg << R"(.png"})" "\n";
        ++instruct_lines_;
      }
    }
    instruct_lines_ = std::min(instruct_lines_, 12);
    // The align stage's per-rank loss is a mean over padded tokens (fairseq's sample size 1 per
    // worker): captions of one token length make two ranks' mean equal one process's.
    const auto tokenizer = kosmosg::text::KosmosGTokenizer::from_files(
        (fs::path(model()) / "kosmosg" / "sentencepiece.bpe.model").string(),
        (fs::path(model()) / "kosmosg" / "dict.txt").string());
    std::ofstream align(d / "align.jsonl");
    size_t length = 0;
    for (const char* shape : {"square", "circle", "triangle", "star"})
      for (const auto& [fg, fg_rgb] : colours)
        for (const auto& [bg, bg_rgb] : colours) {
          const std::string caption = "a " + fg + " " + shape + " on a " + bg + " background";
          const size_t n = tokenizer.encode(caption).size();
          if (length == 0) length = n;
          if (n != length || fg == bg || align_lines_ == 8) continue;
          align << R"({"text": ")" << caption << R"("})" "\n";
          ++align_lines_;
        }
  }
  static void TearDownTestSuite() { if (!std::getenv("KOSMOSG_KEEP_TEST_DIR")) fs::remove_all(work_); }

  static std::string model() { return (work_ / "model").string(); }
  static std::string train(const std::string& stage, const fs::path& out, const std::string& extra) {
    return "train --stage " + stage + " --model " + model() + " --data " + (work_ / "data" / (stage + ".jsonl")).string() +
           " --out " + out.string() + " --threads 1 --quiet --seed 3 " + extra;
  }

  static fs::path work_;
  static kosmosg::test::CliResult convert_;
  static int instruct_lines_, align_lines_;
};

fs::path DistributedTrain::work_;
kosmosg::test::CliResult DistributedTrain::convert_;
int DistributedTrain::instruct_lines_ = 0;
int DistributedTrain::align_lines_ = 0;

TEST_F(DistributedTrain, TwoRanksTrainAsOneProcessWithTheCombinedBatch) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  ASSERT_EQ(instruct_lines_, 12);
  ASSERT_EQ(align_lines_, 8);
  for (const std::string stage : {"instruct", "align"}) {
    // Small buckets: several all-reduces per backward, launched in bucket order.
    const std::string common = "--steps 3 --lr 1e-3 --warmup 0 --dist-bucket-mb 0.002 --dist-timeout 60";
    const fs::path one = work_ / (stage + "_one"), two = work_ / (stage + "_two");
    const auto single = run_cli(train(stage, one, common + " --batch-size 4"));
    ASSERT_EQ(single.status, 0) << single.output;
    const auto pair = run_job(train(stage, two, common + " --batch-size 2"), 2, work_ / (stage + "_two.log"));
    ASSERT_EQ(pair.status, (std::vector<int>{0, 0})) << pair.logs[0] << pair.logs[1];
    expect_same_weights(one, two, 2e-5);
    // Rank 0 alone writes the output; its metrics count both ranks' samples.
    std::ifstream metrics(two / "metrics.jsonl");
    std::string line;
    std::getline(metrics, line);
    const auto first = kosmosg::io::parse_json(line, "metrics");
    EXPECT_EQ(first.at("samples").get<int64_t>(), 4) << stage;
    EXPECT_EQ(first.at("world_size").get<int64_t>(), 2) << stage;
    if (stage != "instruct") continue;
    // Accumulating two micro-batches per rank (only the second communicates) is the same update
    // again; the align loss is per micro-batch, like its per-worker sample size, so only instruct.
    const fs::path accumulated = work_ / "instruct_accumulated";
    const auto acc = run_job(train(stage, accumulated, common + " --batch-size 1 --update-freq 2"), 2,
                             work_ / "instruct_accumulated.log");
    ASSERT_EQ(acc.status, (std::vector<int>{0, 0})) << acc.logs[0] << acc.logs[1];
    expect_same_weights(one, accumulated, 2e-5);
  }
}

TEST_F(DistributedTrain, ResumesWithTheSameAndAnotherNumberOfRanks) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const std::string common = "--batch-size 2 --lr 1e-3 --warmup 0 --save-every 2 --dist-timeout 60";
  const fs::path straight = work_ / "resume_straight", split = work_ / "resume_split", shrunk = work_ / "resume_shrunk";
  auto j = run_job(train("instruct", straight, common + " --steps 4"), 2, work_ / "straight.log");
  ASSERT_EQ(j.status, (std::vector<int>{0, 0})) << j.logs[0] << j.logs[1];
  j = run_job(train("instruct", split, common + " --steps 2"), 2, work_ / "split.log");
  ASSERT_EQ(j.status, (std::vector<int>{0, 0})) << j.logs[0] << j.logs[1];
  fs::copy(split, shrunk, fs::copy_options::recursive);
  j = run_job(train("instruct", split, common + " --steps 4 --resume"), 2, work_ / "split2.log");
  ASSERT_EQ(j.status, (std::vector<int>{0, 0})) << j.logs[0] << j.logs[1];
  expect_same_weights(straight, split, 0.0);

  // One process goes on from the two ranks' checkpoint, its data position merged from both.
  const auto one = run_cli(train("instruct", shrunk, common + " --steps 4 --resume"));
  ASSERT_EQ(one.status, 0) << one.output;
  std::ifstream metrics(shrunk / "metrics.jsonl");
  std::vector<int64_t> updates;
  for (std::string line; std::getline(metrics, line);)
    updates.push_back(kosmosg::io::parse_json(line, "metrics").at("update").get<int64_t>());
  EXPECT_EQ(updates, (std::vector<int64_t>{1, 2, 3, 4}));
}

TEST_F(DistributedTrain, LaunchScriptStartsTheRanks) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const fs::path script = fs::path(__FILE__).parent_path().parent_path().parent_path() / "scripts" / "launch.sh";
  const fs::path out = work_ / "launched";
  const auto launched = kosmosg::test::run_command("timeout 120 " + script.string() + " 2 " + KOSMOSG_CLI_PATH + " " +
                                                   train("align", out, "--steps 2 --batch-size 2 --dist-timeout 60"));
  ASSERT_EQ(launched.status, 0) << launched.output;
  std::ifstream metrics(out / "metrics.jsonl");
  std::string line;
  std::getline(metrics, line);
  EXPECT_EQ(kosmosg::io::parse_json(line, "metrics").at("world_size").get<int64_t>(), 2);
}

// Each rank counts the samples it could not read in its own shard; the metrics and the summary
// give the sum over the ranks, which the ranks' saved loader states add up to.
TEST_F(DistributedTrain, UnreadableSamplesAreCountedOverTheRanks) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const fs::path d = work_ / "data", out = work_ / "broken_counts";
  {
    std::ofstream broken(d / "broken.jsonl");
    for (int i = 0; i < 8; ++i)
      broken << R"({"prompt": "<i> on a green background", "images": [")" << (i % 3 == 1 ? "missing.png" : "red.png")
             << R"("], "target": "red_on_green.png"})" "\n";
  }
  const std::string args = "train --stage instruct --model " + model() + " --data " + (d / "broken.jsonl").string() +
                           " --out " + out.string() +
                           " --threads 1 --quiet --seed 3 --steps 3 --batch-size 1 --dist-timeout 60";
  const auto j = run_job(args, 2, work_ / "broken_counts.log");
  ASSERT_EQ(j.status, (std::vector<int>{0, 0})) << j.logs[0] << j.logs[1];
  const auto state = kosmosg::io::read_json((out / "checkpoints" / "step_00000003" / "state.json").string());
  std::vector<int64_t> per_rank;
  for (const auto& rank : state.at("data_ranks")) per_rank.push_back(rank.at("stats").at("samples_failed").get<int64_t>());
  ASSERT_EQ(per_rank.size(), 2u);
  EXPECT_GT(per_rank[1], 0);
  std::ifstream metrics(out / "metrics.jsonl");
  std::string line, last;
  while (std::getline(metrics, line)) last = line;
  EXPECT_EQ(kosmosg::io::parse_json(last, "metrics").at("samples_failed").get<int64_t>(), per_rank[0] + per_rank[1]);
}

// torchrun itself, where it is installed (KOSMOSG_TORCHRUN, PATH, or the pip build's environment).
std::string find_torchrun() {
  if (const char* t = std::getenv("KOSMOSG_TORCHRUN"); t && *t) return t;
  std::vector<fs::path> candidates;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream dirs(path);
    for (std::string dir; std::getline(dirs, dir, ':');)
      if (!dir.empty()) candidates.push_back(fs::path(dir) / "torchrun");
  }
  const char* cache = std::getenv("KOSMOSG_CACHE");
  const char* home = std::getenv("HOME");
  if (cache && *cache)
    candidates.push_back(fs::path(cache) / "kosmosg-torch" / "bin" / "torchrun");
  else if (home)
    candidates.push_back(fs::path(home) / ".cache" / "kosmosg-torch" / "bin" / "torchrun");
  for (const auto& c : candidates)
    if (::access(c.c_str(), X_OK) == 0) return c.string();
  return "";
}

// The process ids whose command line mentions `needle` and whose environment holds `variable`.
std::vector<pid_t> processes_with(const std::string& needle, const std::string& variable) {
  std::vector<pid_t> found;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    const std::string cmdline = slurp(entry.path() / "cmdline"), env = slurp(entry.path() / "environ");
    if (cmdline.find(needle) == std::string::npos) continue;
    const std::string nul(1, '\0');
    if ((nul + env).find(nul + variable + nul) == std::string::npos) continue;
    found.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return found;
}

// Under `torchrun --no-python` the ranks share the agent's store; when a rank dies, torchrun
// restarts the group, whose ranks meet under the new attempt's keys and resume from the last
// complete checkpoint.
TEST_F(DistributedTrain, TorchrunRestartsAKilledGroupWhichResumes) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const std::string torchrun = find_torchrun();
  if (torchrun.empty())
    GTEST_SKIP() << KOSMOSG_SKIP_MARKER "torchrun is not installed (KOSMOSG_TORCHRUN, PATH, or KOSMOSG_LIBTORCH=pip "
                                        "scripts/setup.sh)";
  const std::string launch = torchrun + " --no-python --standalone --nproc-per-node 2 ";
#if TORCH_VERSION_MAJOR < 2
  // LibTorch 1.x cannot share a torch 2.x agent's store: it says so at once and names the way out.
  const auto refused = kosmosg::test::run_command("timeout 60 " + launch + KOSMOSG_CLI_PATH + " " +
                                                  train("align", work_ / "torchrun_agent_store", "--steps 1"));
  EXPECT_NE(refused.status, 0);
  EXPECT_NE(refused.output.find("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"), std::string::npos) << refused.output;
  const std::string environment = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 ";
#else
  const std::string environment;
#endif
  const fs::path out = work_ / "torchrun", log = work_ / "torchrun.log";
  const std::string cmd = environment + "exec timeout 180 " + launch + "--max-restarts 1 " +
                          KOSMOSG_CLI_PATH + " " +
                          train("align", out, "--steps 40 --batch-size 2 --save-every 1 --resume --dist-timeout 30") +
                          " >" + log.string() + " 2>&1";
  // In a process group of its own, so that a failing test stops torchrun's workers too.
  const pid_t job = ::fork();
  if (job == 0) {
    ::setpgid(0, 0);
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  std::vector<pid_t> rank1;
  while (std::chrono::steady_clock::now() < deadline && rank1.empty()) {
    if (fs::exists(out / "checkpoints" / "latest"))
      rank1 = processes_with(out.string(), "RANK=1");
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto stop_group = [&] { ::kill(-job, SIGKILL); };
  if (rank1.size() != 1) {
    stop_group();
    wait_for(job, 0);
    FAIL() << "found " << rank1.size() << " rank-1 processes; " << slurp(log);
  }
  ::kill(rank1[0], SIGKILL);
  const int status = wait_for(job, 180);
  stop_group();
  const std::string output = slurp(log);
  ASSERT_EQ(status, 0) << output;
  EXPECT_NE(output.find("exitcode: -9"), std::string::npos) << output;
  EXPECT_NE(output.find("resumed from"), std::string::npos) << output;
  std::ifstream metrics(out / "metrics.jsonl");
  std::vector<int64_t> updates;
  for (std::string line; std::getline(metrics, line);) {
    const auto m = kosmosg::io::parse_json(line, "metrics");
    updates.push_back(m.at("update").get<int64_t>());
    EXPECT_EQ(m.at("world_size").get<int64_t>(), 2);
  }
  std::vector<int64_t> expected(40);
  std::iota(expected.begin(), expected.end(), 1);
  EXPECT_EQ(updates, expected);
  EXPECT_EQ(kosmosg::train::CheckpointManager(out.string(), 3).load_latest()->state.at("trainer").at("num_updates"), 40);
}

// Starts a long two-rank run and waits until rank 0 has logged an update.
std::vector<pid_t> start_long_run(const std::string& args, const fs::path& out, const fs::path& logs) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r) pids.push_back(spawn_rank(args, r, 2, port, logs.string() + ".rank" + std::to_string(r)));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline && slurp(out / "metrics.jsonl").empty())
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  return pids;
}

TEST_F(DistributedTrain, AKilledRankStopsTheOtherNamingIt) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const fs::path out = work_ / "killed";
  const auto pids = start_long_run(train("instruct", out, "--steps 100000 --batch-size 2 --dist-timeout 10"), out,
                                   work_ / "killed.log");
  ASSERT_FALSE(slurp(out / "metrics.jsonl").empty()) << "the run never trained";
  ::kill(pids[1], SIGKILL);
  wait_for(pids[1], 5);
  const auto start = std::chrono::steady_clock::now();
  const int status = wait_for(pids[0], 30);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::string log = slurp(work_ / "killed.log.rank0");
  EXPECT_NE(status, 0) << log;
  EXPECT_NE(status, -2) << "rank 0 did not stop: " << log;
  EXPECT_LT(seconds, 25) << log;
  EXPECT_NE(log.find("rank 1 stopped responding"), std::string::npos) << log;
}

TEST_F(DistributedTrain, AHangingRankStopsTheOtherWithinTheTimeout) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const fs::path out = work_ / "hung";
  const auto pids = start_long_run(train("instruct", out, "--steps 100000 --batch-size 2 --dist-timeout 4"), out,
                                   work_ / "hung.log");
  ASSERT_FALSE(slurp(out / "metrics.jsonl").empty()) << "the run never trained";
  ::kill(pids[1], SIGSTOP);
  const auto start = std::chrono::steady_clock::now();
  const int status = wait_for(pids[0], 30);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ::kill(pids[1], SIGKILL);
  wait_for(pids[1], 5);
  const std::string log = slurp(work_ / "hung.log.rank0");
  EXPECT_NE(status, 0) << log;
  EXPECT_NE(status, -2) << "rank 0 did not stop: " << log;
  EXPECT_LT(seconds, 20) << log;
  EXPECT_NE(log.find("rank 1"), std::string::npos) << log;
}

TEST_F(DistributedTrain, ARendezvousThatCannotCompleteSaysWhoIsMissing) {
  ASSERT_EQ(convert_.status, 0) << convert_.output;
  const int port = free_port();
  const fs::path log = work_ / "alone.log";
  const pid_t pid = spawn_rank(train("instruct", work_ / "alone", "--steps 1 --dist-timeout 2"), 0, 2, port, log);
  EXPECT_EQ(wait_for(pid, 30), 1);
  const std::string text = slurp(log);
  EXPECT_NE(text.find("1 of 2 ranks joined (missing: rank 1)"), std::string::npos) << text;
}

}  // namespace
