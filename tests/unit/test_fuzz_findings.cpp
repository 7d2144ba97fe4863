// Regression tests for what fuzzing the readers found (scripts/fuzz.sh, tests/fuzz/README.md).
// Inputs that reproduce a finding live in tests/fuzz/corpus/<target>/, the seed corpus.
#include <gtest/gtest.h>

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include "kosmosg/text/clip_tokenizer.h"

namespace {

namespace fs = std::filesystem;
namespace text = kosmosg::text;

const fs::path kSourceRoot = fs::path(__FILE__).parent_path().parent_path().parent_path();

// Distinct lower-case words: "aa", "ba", ..., in base 26, `count` of them separated by spaces.
std::string distinct_words(size_t first, size_t count) {
  std::string out;
  for (size_t i = first; i < first + count; ++i) {
    std::string word = "a";
    for (size_t v = i; v > 0; v /= 26) word.push_back(static_cast<char>('a' + v % 26));
    out += word + " ";
  }
  return out;
}

// fuzz_clip_tokenizer's memory grew with every input: the BPE cache kept each distinct word of
// up to 256 bytes for good, so a process that tokenises a data set's captions (the align stage's
// CLIP length filter) grew without bound. A full cache now starts over.
TEST(FuzzFindings, ClipTokenizerCacheStaysBoundedOverDistinctWords) {
  const auto tokenizer = text::CLIPTokenizer::from_folder((kSourceRoot / "configs/shapes/tokenizer").string());
  const std::string early = distinct_words(0, 10);
  const auto early_tokens = tokenizer.bpe_tokens(early);
  EXPECT_EQ(tokenizer.cached_words(), 2u + 10u);  // the special tokens and the ten words

  // More distinct words than the cache holds (2^16): without a bound it would hold all of them.
  const size_t words = 70000;
  EXPECT_GE(tokenizer.bpe_tokens(distinct_words(10, words)).size(), words);
  EXPECT_LE(tokenizer.cached_words(), size_t{1} << 16);
  EXPECT_GT(tokenizer.cached_words(), 2u);

  // Starting over changes no result: the early words merge as before, the special tokens stay whole.
  EXPECT_EQ(tokenizer.bpe_tokens(early), early_tokens);
  const auto special = tokenizer.bpe_tokens("a red circle<|endoftext|>");
  ASSERT_FALSE(special.empty());
  EXPECT_EQ(special.back(), "<|endoftext|>");
}

}  // namespace
