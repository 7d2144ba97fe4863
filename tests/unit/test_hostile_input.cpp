// Regression tests for the outside audit of hostile inputs (issue 12 item 8): every bad input is a
// clear kosmosg::Error or a non-zero exit with a message, in bounded time and memory. The inputs
// live in tests/fuzz/corpus/<target>/, the seed corpus of the fuzzing harnesses.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kosmosg/io/config.h"
#include "kosmosg/io/file.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/pickle.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/io/torch_checkpoint.h"
#include "kosmosg/models/mllm.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/text/clip_tokenizer.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;
namespace io = kosmosg::io;
using kosmosg::test::expect_error;
using kosmosg::test::run_cli;
using kosmosg::test::shared_dir;
using kosmosg::test::unpickle;

const fs::path kCorpus = fs::path(__FILE__).parent_path().parent_path() / "fuzz" / "corpus";

std::string corpus(const std::string& target, const std::string& name) { return (kCorpus / target / name).string(); }

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class HostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    work = fs::temp_directory_path() / ("kosmosg_hostile_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(work);
    fs::create_directories(work);
  }
  void TearDown() override { fs::remove_all(work); }

  // Runs `kosmosg args` under `ulimit -v 4000000` and expects a refusal mentioning `needle`, with
  // neither a LibTorch backtrace nor a crash.
  void expect_cli_error(const std::string& args, const std::string& needle) {
    const auto r = run_cli_limited(args);
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("kosmosg: error:"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.output;
    EXPECT_EQ(r.output.find("Exception raised from"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("frame #"), std::string::npos) << r.output;
  }
  static kosmosg::test::CliResult run_cli_limited(const std::string& args) {
    kosmosg::test::CliResult r{-1, ""};
    const std::string command = "sh -c 'ulimit -v 4000000; exec " + std::string(KOSMOSG_CLI_PATH) + " " + args + "' 2>&1";
    FILE* pipe = popen(command.c_str(), "r");
    std::array<char, 4096> buf{};
    while (size_t n = fread(buf.data(), 1, buf.size(), pipe)) r.output.append(buf.data(), n);
    const int raw = pclose(pipe);
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    return r;
  }
  std::string write(const std::string& name, const std::string& data) {
    const auto path = (work / name).string();
    std::ofstream(path, std::ios::binary) << data;
    return path;
  }
  static std::string sd15() { return shared_dir() + "/fixtures/tiny-sd15"; }
  static std::string official() { return shared_dir() + "/fixtures/kosmosg-official-tiny"; }

  fs::path work;
};

// ---- pickles: sharing must not expand work beyond the input's size --------------------------

TEST_F(HostileTest, PickleDictKeyOfSharedTuplesIsRefusedAtOnce) {
  const auto start = std::chrono::steady_clock::now();
  expect_error([&] { unpickle(bytes_of(corpus("pickle", "shared_tuple_key.pkl"))); }, {"dict key", "expands"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(HostileTest, PickleRepeatedCopiesAreChargedToTheInputsBudget) {
  expect_error([&] { unpickle(bytes_of(corpus("pickle", "dict_copies.pkl"))); }, {"expands to more than"});
}

TEST_F(HostileTest, PickleSharedStringsAreNotCopied) {
  // A 1 MiB string referenced 100,000 times: 100 GB if each reference copied it.
  const uint32_t n = 1 << 20;
  std::string data = "\x80\x02X";  // PROTO 2, BINUNICODE of n bytes
  for (int i = 0; i < 4; ++i) data += static_cast<char>((n >> (8 * i)) & 0xff);
  data += std::string(n, 's');
  data += std::string("q\0", 2) + "0](";  // BINPUT 0, POP, EMPTY_LIST, MARK
  for (int i = 0; i < 100000; ++i) data += std::string("h\0", 2);  // BINGET 0
  data += "e.";  // APPENDS, STOP
  const auto list = unpickle(data);
  ASSERT_EQ(list.as_list().size(), 100000u);
  EXPECT_EQ(&list.as_list().front().as_string(), &list.as_list().back().as_string());
  EXPECT_EQ(list.as_list().back().as_string().size(), n);
}

TEST_F(HostileTest, PickleSharedConfigIsRefusedBeforeItBecomesJson) {
  auto state = unpickle(bytes_of(corpus("pickle", "shared_cfg.pkl")));
  const auto start = std::chrono::steady_clock::now();
  expect_error([&] { io::read_fairseq_checkpoint(std::move(state), "shared_cfg.pkl"); }, {"shared_cfg.pkl: cfg", "expand"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST_F(HostileTest, CliInspectAndConvertRefusePickleBombsWithinFourGigabytes) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  expect_cli_error("inspect " + corpus("checkpoint", "shared_cfg.pt"), "expand");
  expect_cli_error("inspect " + corpus("checkpoint", "shared_tuple_key.pt"), "dict key");
  fs::copy_file(official() + "/sentencepiece.bpe.model", work / "sentencepiece.bpe.model");
  fs::copy_file(official() + "/dict.txt", work / "dict.txt");
  expect_cli_error("convert " + corpus("checkpoint", "shared_cfg.pt") + " " + (work / "out").string() +
                       " --tokenizer " + work.string() + " --sd15 " + sd15(),
                   "expand");
  EXPECT_FALSE(fs::exists(work / "out"));
}

// ---- JSON: nesting, numbers out of range, messages of bounded size --------------------------

TEST_F(HostileTest, JsonNestedTooDeepIsRefusedWithoutRecursion) {
  const std::string deep = std::string(120000, '[') + std::string(120000, ']');
  expect_error([&] { io::parse_json(deep, "deep.json"); }, {"deep.json", "nested more than"});
  expect_error([&] { io::read_json(corpus("config", "deep.json")); }, {"deep.json", "nested more than"});
  // A value nested within the limit still prints briefly in a wrong-type error.
  const auto nested = io::parse_json("{\"sample_size\": " + std::string(200, '[') + std::string(200, ']') + "}", "x");
  try {
    io::config_value<int64_t>(nested, "sample_size", 0, "unet config");
    ADD_FAILURE() << "no error";
  } catch (const kosmosg::Error& e) {
    EXPECT_LT(std::string(e.what()).size(), 300u) << e.what();
  }
}

TEST_F(HostileTest, JsonHugeValuesAreCutInMessages) {
  io::Json config = {{"sample_size", std::string(1 << 20, 'x')}};
  try {
    io::config_value<int64_t>(config, "sample_size", 0, "unet config");
    ADD_FAILURE() << "no error";
  } catch (const kosmosg::Error& e) {
    const std::string what = e.what();
    EXPECT_LT(what.size(), 300u);
    EXPECT_NE(what.find("sample_size"), std::string::npos) << what;
  }
  EXPECT_EQ(io::brief(io::Json::array({1, 2, 3})), "[1,2,3]");
  EXPECT_LE(io::brief(io::Json(std::vector<int>(100000, 7))).size(), 84u);
}

TEST_F(HostileTest, IntegerConfigValuesOutOfRangeAreRefused) {
  for (const char* name : {"float_for_int.json", "infinity_for_int.json"}) {
    const auto json = io::read_json(corpus("config", name));
    expect_error([&] { io::config_value<int64_t>(json, "sample_size", 0, name); },
                 {name, "sample_size", "not an integer in range"});
    expect_error([&] { kosmosg::models::UNet2DConditionConfig::from_json(json); }, {"sample_size"});
  }
  const auto json = io::parse_json(R"({"a": 64.0, "b": 64.5, "c": -1, "d": [1, 1e300], "e": 9223372036854775808,
                                       "f": true})", "numbers");
  EXPECT_EQ(io::config_value<int64_t>(json, "a", 0), 64);
  expect_error([&] { io::config_value<int64_t>(json, "b", 0); }, {"'b'", "64.5"});
  expect_error([&] { io::config_value<uint64_t>(json, "c", 0); }, {"'c'"});
  expect_error([&] { io::config_value<std::vector<int64_t>>(json, "d", {}); }, {"'d'"});
  expect_error([&] { io::config_value<int64_t>(json, "e", 0); }, {"'e'"});
  expect_error([&] { io::config_value<int>(json, "f", 0); }, {"'f'", "wrong type"});
  EXPECT_EQ(io::config_value<double>(json, "b", 0), 64.5);
}

// ---- safetensors ---------------------------------------------------------------------------

TEST_F(HostileTest, SafetensorsDimensionOfTwoToTheSixtyThreeIsRefused) {
  const auto path = corpus("safetensors", "huge_dim_behind_zero.safetensors");
  expect_error([&] { io::SafeTensors::open(path); }, {"huge_dim_behind_zero", "2^63"});
  expect_cli_error("inspect " + path, "2^63");
  expect_cli_error("generate --model " + sd15() + " --prompt x --quiet --lora " + path + " --out " +
                       (work / "x.png").string(),
                   "2^63");
}

// ---- model sizes ---------------------------------------------------------------------------

TEST_F(HostileTest, ConfigSizesAreBounded) {
  expect_error([&] { kosmosg::models::UNet2DConditionConfig::from_json(io::read_json(corpus("config", "huge_width.json"))); },
               {"block_out_channels", "1048576"});
  io::Json mllm = {{"decoder_embed_dim", 1 << 20}, {"decoder_attention_heads", 1}};
  expect_error([&] { kosmosg::models::MLLMConfig::from_json(mllm); }, {"decoder_embed_dim", "at most"});
}

TEST_F(HostileTest, CliModelTooLargeForMemoryNamesItsConfig) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  // Within the size bounds, but a 4 GB address space cannot hold it: the error names the config.
  fs::copy(sd15(), work / "model", fs::copy_options::recursive);
  for (const auto& e : fs::recursive_directory_iterator(work / "model"))
    fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
  auto unet = io::read_json((work / "model" / "unet" / "config.json").string());
  unet["block_out_channels"] = {16384, 16384, 16384, 16384};
  unet["norm_num_groups"] = 32;
  unet["attention_head_dim"] = 8;
  unet["cross_attention_dim"] = 16384;
  std::ofstream((work / "model" / "unet" / "config.json").string()) << unet.dump();
  expect_cli_error("generate --model " + (work / "model").string() + " --prompt x --quiet --out " +
                       (work / "x.png").string(),
                   "unet/config.json");
  EXPECT_FALSE(fs::exists(work / "x.png"));
}

TEST_F(HostileTest, CliSizesFileOfTheWrongTypeIsNamed) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto out = (work / "out").string();
  expect_cli_error("convert " + official() + "/checkpoint_tiny.pt " + out + " --sizes " +
                       corpus("config", "wrong_type_sizes.json"),
                   "'mllm.width' is \"abc\"");
  expect_cli_error("convert " + official() + "/checkpoint_tiny.pt " + out + " --sizes " +
                       corpus("config", "wrong_type_sizes.json"),
                   "--sizes " + corpus("config", "wrong_type_sizes.json"));
  expect_cli_error("convert " + official() + "/checkpoint_tiny.pt " + out + " --sizes " + write("array.json", "[1]"),
                   "expected a JSON object");
  EXPECT_FALSE(fs::exists(out));
}

// ---- files that are not regular files -------------------------------------------------------

TEST_F(HostileTest, DevicesFifosAndFoldersAreRefusedWithoutReading) {
  const auto fifo = (work / "fifo").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const auto start = std::chrono::steady_clock::now();
  for (const std::string path : {std::string("/dev/zero"), fifo}) {
    expect_error([&] { io::read_image(path); }, {path, "not a regular file"});
    expect_error([&] { io::read_image_size(path); }, {path, "not a regular file"});
    expect_error([&] { io::read_json(path); }, {path, "not a regular file"});
    expect_error([&] { io::SafeTensors::open(path); }, {path, "not a regular file"});
    expect_error([&] { io::load_torch_checkpoint(path); }, {path, "not a regular file"});
    expect_error([&] { kosmosg::text::CLIPTokenizer::from_files(path, path); }, {path, "not a regular file"});
    expect_error([&] { io::read_png_text(path); }, {path, "not a regular file"});
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  expect_error([&] { io::read_json(work.string()); }, {"is a folder"});
  expect_error([&] { io::read_file((work / "missing").string(), "test", 10); }, {"no such file"});
  expect_error([&] { io::read_file(write("big", "12345"), "test", 4); }, {"5 bytes", "4 bytes"});
  expect_cli_error("inspect " + fifo, "not a regular file");
  expect_cli_error("generate --model " + sd15() + " --prompt x --quiet --init-image /dev/zero --out " +
                       (work / "x.png").string(),
                   "not a regular file");
}

TEST_F(HostileTest, ModelConfigThatIsAFolderIsNamed) {
  fs::create_directories(work / "model" / "unet" / "config.json");
  expect_error([&] { io::read_json((work / "model" / "unet" / "config.json").string()); }, {"config.json", "is a folder"});
}

// ---- images: the header decides before decoding ---------------------------------------------

TEST_F(HostileTest, ImagesAreCheckedFromTheirHeaders) {
  const auto huge = corpus("image", "huge_header_only.png");
  const auto [w, h] = io::read_image_size(huge);
  EXPECT_EQ(w, 13000);
  EXPECT_EQ(h, 13000);
  expect_error([&] { io::read_image(huge, 1000000); }, {"13000x13000", "above the limit"});
  expect_error([&] { io::read_image(corpus("image", "bmp_huge.bmp")); }, {"100000x100000"});
  expect_error([&] { io::read_image(corpus("image", "empty.png")); }, {"empty image", "0x0"});
  expect_error([&] { io::read_image(corpus("image", "gif.gif")); }, {"supported format"});
  expect_error([&] { io::read_image(corpus("image", "jpeg_without_frame.jpg")); }, {"JPEG", "declares no size"});
  // Corrupt pixel data behind a valid header: no OpenCV assertion text reaches the message.
  try {
    io::read_image(corpus("image", "corrupt_data.png"));
    ADD_FAILURE() << "no error";
  } catch (const kosmosg::Error& e) {
    EXPECT_EQ(std::string(e.what()).find("Assertion"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cannot be decoded"), std::string::npos) << e.what();
  }
}

TEST_F(HostileTest, CliHugeInitImageIsRefusedBeforeDecoding) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  // Only the header exists: had the image been decoded, the error would be a decoding one.
  expect_cli_error("generate --model " + sd15() + " --prompt x --quiet --init-image " +
                       corpus("image", "huge_header_only.png") + " --out " + (work / "x.png").string(),
                   "larger than the 4096");
  EXPECT_FALSE(fs::exists(work / "x.png"));
}

// ---- command-line bounds ---------------------------------------------------------------------

TEST_F(HostileTest, CliOptionsOutOfRangeAreRefused) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const std::string base = "generate --model " + sd15() + " --prompt x --quiet --out " + (work / "x.png").string() + " ";
  expect_cli_error(base + "--threads 1000", "--threads must be from 1 to");
  expect_cli_error(base + "--num-images 1000000000", "--num-images must be from 1 to 1000");
  expect_cli_error(base + "--seed -1", "--seed '-1' is not a whole number");
  expect_cli_error(base + "--seed 18446744073709551615 --num-images 2", "runs past the largest seed");
  expect_cli_error(base + "--guidance inf", "--guidance inf must be a finite number");
  expect_cli_error(base + "--guidance nan", "must be a finite number");
  expect_cli_error(base + "--lora " + (work / "F").string() + ":abc", "the scale 'abc' is not a finite number");
  for (const auto& e : fs::directory_iterator(work)) EXPECT_NE(e.path().extension(), ".png") << e.path();
}

// ---- CLIP tokenizer: bounded work, identical results ----------------------------------------

// CLIP's Python BPE, quadratic as written there, to check the heap version against.
std::vector<std::string> reference_bpe(const std::string& word, const std::map<std::string, size_t>& ranks) {
  std::vector<std::string> parts;
  for (char c : word) parts.emplace_back(1, c);
  parts.back() += "</w>";
  while (parts.size() > 1) {
    size_t best = SIZE_MAX;
    std::string first, second;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = ranks.find(parts[i] + " " + parts[i + 1]);
      if (it != ranks.end() && it->second < best) best = it->second, first = parts[i], second = parts[i + 1];
    }
    if (best == SIZE_MAX) break;
    std::vector<std::string> merged;
    for (size_t i = 0; i < parts.size();) {
      if (i + 1 < parts.size() && parts[i] == first && parts[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(parts[i++]);
      }
    }
    parts = std::move(merged);
  }
  return parts;
}

TEST_F(HostileTest, ClipLongWordIsTokenisedQuicklyAndAsPythonDoes) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = sd15() + "/tokenizer";
  const auto tok = kosmosg::text::CLIPTokenizer::from_folder(dir);
  const auto start = std::chrono::steady_clock::now();
  for (const char* name : {"long_word.txt", "long_mixed_word.txt"}) {
    const auto ids = tok.encode(bytes_of(corpus("clip_tokenizer", name)));
    EXPECT_EQ(ids.size(), 77u);
    EXPECT_EQ(ids.front(), tok.bos_id());
  }
  EXPECT_EQ(tok.bpe_tokens(bytes_of(corpus("clip_tokenizer", "long_mixed_word.txt"))).front(), tok.bpe_tokens("abcdefghij").front());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));

  std::map<std::string, size_t> ranks;
  std::ifstream merges(dir + "/merges.txt");
  std::string line;
  std::getline(merges, line);  // #version
  while (std::getline(merges, line) && ranks.size() < 48894) ranks.emplace(line, ranks.size());
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const std::string alphabet = trial % 2 ? "aeinorst" : "abcdefghijklmnopqrstuvwxyz";
    std::string word(1 + rng() % 60, 'a');
    for (auto& c : word) c = alphabet[rng() % alphabet.size()];
    EXPECT_EQ(tok.bpe_tokens(word), reference_bpe(word, ranks)) << word;
  }
}

// ---- convert: messages, folders, leftovers ---------------------------------------------------

TEST_F(HostileTest, CliConvertNamesAMissingCheckpointAndRefusesMissingParents) {
  expect_cli_error("convert " + (work / "missing.pt").string() + " " + (work / "out").string(), "missing.pt: cannot open: no such file");
  expect_cli_error("convert " + official() + "/checkpoint_tiny.pt " + (work / "no" / "such" / "out").string() +
                       " --sizes " + official() + "/sizes.json",
                   "does not exist");
  EXPECT_FALSE(fs::exists(work / "no"));
}

TEST_F(HostileTest, CliConvertRemovesStagingFoldersOfDeadProcesses) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  // pid_max is at most 2^22, so no process has this id.
  const fs::path stale = work / "out.partial-99999999";
  const fs::path live = work / ("out.partial-" + std::to_string(::getpid()));
  fs::create_directories(stale / "kosmosg");
  fs::create_directories(live);
  const auto r = run_cli("convert " + official() + "/checkpoint_tiny.pt " + (work / "out").string() + " --sizes " +
                         official() + "/sizes.json");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_TRUE(fs::exists(work / "out" / "kosmosg" / "config.json"));
}

}  // namespace
