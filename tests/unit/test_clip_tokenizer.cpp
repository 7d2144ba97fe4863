#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

#include "kosmosg/error.h"
#include "kosmosg/text/clip_tokenizer.h"
#include "support.h"

namespace fs = std::filesystem;
using kosmosg::text::CLIPTokenizer;

namespace {

using kosmosg::test::temp_dir;

// A tokenizer folder with a handful of tokens: "abc" merges to one token, "ab" does not.
fs::path tiny_tokenizer(const std::string& name, const std::string& merges) {
  auto dir = temp_dir("clip_tok", name);
  kosmosg::test::write_text(dir / "vocab.json",
        R"({"a":0,"b":1,"c":2,"a</w>":3,"b</w>":4,"c</w>":5,"ab":6,"abc</w>":7,)"
        R"("<|startoftext|>":8,"<|endoftext|>":9})");
  kosmosg::test::write_text(dir / "merges.txt", merges);
  return dir;
}

using kosmosg::test::error_of;

// The real CLIP tokenizer files of the golden data, if present.
std::string golden_tokenizer() {
  const char* env = std::getenv("KOSMOSG_SHARED_DIR");
  const fs::path dir = fs::path(env ? env : KOSMOSG_DEFAULT_SHARED_DIR) / "golden/clip/tokenizer";
  return fs::exists(dir / "vocab.json") ? dir.string() : "";
}

}  // namespace

TEST(CLIPTokenizer, TinyVocabularyMergesByRank) {
  auto tok = CLIPTokenizer::from_folder(tiny_tokenizer("tiny", "#version: 0.2\na b\nab c</w>\n").string());
  EXPECT_EQ(tok.bos_id(), 8);
  EXPECT_EQ(tok.eos_id(), 9);
  EXPECT_EQ(tok.vocab_size(), 10u);
  EXPECT_EQ(tok.bpe_tokens("ABC ab"), (std::vector<std::string>{"abc</w>", "a", "b</w>"}));
  EXPECT_EQ(tok.encode("abc ab", 6), (std::vector<int64_t>{8, 7, 0, 4, 9, 9}));
  // Special tokens written in the text keep their ids; unknown tokens become eos (unk).
  EXPECT_EQ(tok.encode("abc<|startoftext|>z", 6), (std::vector<int64_t>{8, 7, 8, 9, 9, 9}));
}

TEST(CLIPTokenizer, TruncationKeepsEos) {
  auto tok = CLIPTokenizer::from_folder(tiny_tokenizer("trunc", "#version: 0.2\na b\nab c</w>\n").string());
  std::string text;
  for (int i = 0; i < 10; ++i) text += "abc ";
  const auto ids = tok.encode(text, 5);
  EXPECT_EQ(ids, (std::vector<int64_t>{8, 7, 7, 7, 9}));
  EXPECT_EQ(tok.encode("", 3), (std::vector<int64_t>{8, 9, 9}));
  EXPECT_NE(error_of([&] { tok.encode("abc", 1); }).find("max_length"), std::string::npos);
}

TEST(CLIPTokenizer, RealVocabularyPadsTo77) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const std::string dir = golden_tokenizer();
  ASSERT_FALSE(dir.empty()) << "the golden CLIP tokenizer files are missing from " << kosmosg::test::shared_dir();
  auto tok = CLIPTokenizer::from_folder(dir);
  EXPECT_EQ(tok.vocab_size(), 49408u);
  auto ids = tok.encode("A Photo Of A CAT");
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(std::vector<int64_t>(ids.begin(), ids.begin() + 7),
            (std::vector<int64_t>{49406, 320, 1125, 539, 320, 2368, 49407}));
  EXPECT_EQ(ids.back(), 49407);
  std::string many;
  for (int i = 0; i < 100; ++i) many += "cat ";
  ids = tok.encode(many);
  ASSERT_EQ(ids.size(), 77u);
  EXPECT_EQ(ids[0], 49406);
  EXPECT_EQ(ids[75], 2368);
  EXPECT_EQ(ids[76], 49407);
}

TEST(CLIPTokenizer, BadFilesNameTheFile) {
  const auto dir = temp_dir("clip_tok", "bad");
  EXPECT_NE(error_of([&] { CLIPTokenizer::from_folder((dir / "nowhere").string()); }).find("vocab.json"),
            std::string::npos);
  auto good = tiny_tokenizer("nomerges", "#version: 0.2\na b\n");
  fs::remove(good / "merges.txt");
  EXPECT_NE(error_of([&] { CLIPTokenizer::from_folder(good.string()); }).find("merges.txt"), std::string::npos);
  auto malformed = tiny_tokenizer("malformed", "#version: 0.2\na b\nab\n");
  const std::string e = error_of([&] { CLIPTokenizer::from_folder(malformed.string()); });
  EXPECT_NE(e.find("merges.txt line 3"), std::string::npos) << e;
  auto broken = tiny_tokenizer("brokenjson", "#version: 0.2\na b\n");
  kosmosg::test::write_text(broken / "vocab.json", R"({"a":0,)");
  EXPECT_NE(error_of([&] { CLIPTokenizer::from_folder(broken.string()); }).find("vocab.json"), std::string::npos);
  kosmosg::test::write_text(broken / "vocab.json", R"({"a":0,"<|endoftext|>":1})");
  EXPECT_NE(error_of([&] { CLIPTokenizer::from_folder(broken.string()); }).find("<|startoftext|>"),
            std::string::npos);
}

TEST(CLIPTokenizer, CleansTextLikeFtfy) {
  auto tok = CLIPTokenizer::from_folder(tiny_tokenizer("clean", "#version: 0.2\na b\nab c</w>\n").string());
  // Full-width letters, numeric entities and control characters are cleaned before BPE.
  EXPECT_EQ(tok.bpe_tokens("\xEF\xBC\xA1\xEF\xBC\xA2\xEF\xBC\xA3"), (std::vector<std::string>{"abc</w>"}));
  EXPECT_EQ(tok.bpe_tokens("&#97;bc\x07"), (std::vector<std::string>{"abc</w>"}));
  EXPECT_EQ(tok.bpe_tokens("  a\t\n\r\nb  "), (std::vector<std::string>{"a</w>", "b</w>"}));
}
