#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "kosmosg/error.h"
#include "kosmosg/text/kosmosg_tokenizer.h"
#include "kosmosg/text/prompt_layout.h"
#include "support.h"
#include "text/spm_library.h"

namespace fs = std::filesystem;
using kosmosg::text::KosmosGTokenizer;

namespace {

using kosmosg::test::concat;

fs::path golden_tokenizer_dir() { return fs::path(kosmosg::test::shared_dir()) / "golden" / "kosmosg" / "tokenizer"; }

const KosmosGTokenizer& tokenizer() {
  static const KosmosGTokenizer t = KosmosGTokenizer::from_files(
      (golden_tokenizer_dir() / "sentencepiece.bpe.model").string(), (golden_tokenizer_dir() / "dict.txt").string());
  return t;
}

fs::path temp_file(const std::string& name, const std::string& content) {
  auto dir = fs::temp_directory_path() / ("kosmosg_tok_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << content;
  return dir / name;
}

std::string load_error(const std::string& model, const std::string& dict) {
  try {
    KosmosGTokenizer::from_files(model, dict);
  } catch (const kosmosg::Error& e) {
    return e.what();
  }
  return "";
}

std::vector<int64_t> image_span(int64_t length) {
  std::vector<int64_t> span(static_cast<size_t>(length + 1), 64003);
  span.push_back(64004);
  return span;
}

std::vector<size_t> ones_at(const std::vector<uint8_t>& mask) {
  std::vector<size_t> at;
  for (size_t i = 0; i < mask.size(); ++i)
    if (mask[i]) at.push_back(i);
  return at;
}

std::vector<size_t> range(size_t first, size_t last) {
  std::vector<size_t> r;
  for (size_t i = first; i <= last; ++i) r.push_back(i);
  return r;
}

}  // namespace

TEST(KosmosGTokenizer, EncodesTheReferenceExamples) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto& t = tokenizer();
  EXPECT_EQ(t.encode(" a photo of dog"), (std::vector<int64_t>{10, 1121, 9, 1133}));
  EXPECT_EQ(t.encode(" in the snow"), (std::vector<int64_t>{12, 5, 1842}));
  EXPECT_EQ(t.encode(" wearing "), (std::vector<int64_t>{1679}));
  EXPECT_EQ(t.encode(" on the beach"), (std::vector<int64_t>{20, 5, 2711}));
  EXPECT_EQ(t.encode(" </i>"), (std::vector<int64_t>{8001, 166, 409, 6785}));
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_EQ(t.encode("<image>").front(), 8001) << "markup is ordinary text, never the special id";
}

TEST(KosmosGTokenizer, SplitGivesPiecesWithBothIds) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto pieces = tokenizer().split("a dog");
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[1].text, "\xE2\x96\x81" "dog");
  EXPECT_EQ(pieces[1].spm_id, 1132);
  EXPECT_EQ(pieces[1].id, 1133);
  const auto unknown = tokenizer().split("\xEC\x96\xB4");  // a Hangul syllable outside the vocabulary
  ASSERT_FALSE(unknown.empty());
  EXPECT_EQ(unknown.back().spm_id, 0);
  EXPECT_EQ(unknown.back().id, KosmosGTokenizer::kUnk);
}

TEST(KosmosGTokenizer, SpecialIdsFollowTheDictionary) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto& t = tokenizer();
  EXPECT_EQ(t.vocab_size(), 64007);
  EXPECT_EQ(t.bos(), 0);
  EXPECT_EQ(t.pad(), 1);
  EXPECT_EQ(t.eos(), 2);
  EXPECT_EQ(t.unk(), 3);
  EXPECT_EQ(t.mask(), 64001);
  EXPECT_EQ(t.doc_end(), 64002);
  EXPECT_EQ(t.boi(), 64003);
  EXPECT_EQ(t.eoi(), 64004);
  EXPECT_EQ(t.chunk_end(), 64005);
  EXPECT_EQ(t.line_end(), 64006);
  EXPECT_EQ(t.symbol(64003), "<image>");
  EXPECT_EQ(t.index("no such piece"), 3);
  EXPECT_THROW(t.symbol(64007), kosmosg::Error);
}

TEST(KosmosGTokenizer, SpecialsAlreadyInTheDictionaryKeepTheirIds) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  // fairseq's add_symbol returns the existing id instead of appending a second entry.
  const auto dict = temp_file("specials.txt", "\xE2\x96\x81" "dog 5\n<image> 1\n");
  const auto t = KosmosGTokenizer::from_files((golden_tokenizer_dir() / "sentencepiece.bpe.model").string(),
                                              dict.string());
  EXPECT_EQ(t.boi(), 5);
  EXPECT_EQ(t.mask(), 6);
  EXPECT_EQ(t.eoi(), 8);
  EXPECT_EQ(t.line_end(), 10);
  EXPECT_EQ(t.vocab_size(), 11);
  EXPECT_EQ(t.encode("dog cat"), (std::vector<int64_t>{4, 3}));
}

TEST(KosmosGTokenizer, OverwriteFlagAppendsADuplicate) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dict = temp_file("overwrite.txt", "a 1\r\nb 2\na 3 #fairseq:overwrite\n");
  const auto t = KosmosGTokenizer::from_files((golden_tokenizer_dir() / "sentencepiece.bpe.model").string(),
                                              dict.string());
  EXPECT_EQ(t.index("a"), 6);
  EXPECT_EQ(t.index("b"), 5);
  EXPECT_EQ(t.vocab_size(), 13);
}

TEST(KosmosGTokenizer, MissingOrCorruptFilesAreNamed) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto model = (golden_tokenizer_dir() / "sentencepiece.bpe.model").string();
  const auto dict = (golden_tokenizer_dir() / "dict.txt").string();
  auto error = load_error("/nonexistent/spm.model", dict);
  EXPECT_NE(error.find("sentencepiece model /nonexistent/spm.model not found"), std::string::npos) << error;
  error = load_error(model, "/nonexistent/dict.txt");
  EXPECT_NE(error.find("dictionary /nonexistent/dict.txt not found"), std::string::npos) << error;

  const auto garbage = temp_file("garbage.model", "this is not a protobuf\x01\x02");
  error = load_error(garbage.string(), dict);
  EXPECT_NE(error.find(garbage.string() + ": not a readable SentencePiece model"), std::string::npos) << error;

  const auto no_count = temp_file("no_count.txt", "a 1\nlonely\n");
  error = load_error(model, no_count.string());
  EXPECT_NE(error.find(no_count.string() + " line 2"), std::string::npos) << error;
  EXPECT_NE(error.find("expected '<symbol> <count>'"), std::string::npos) << error;

  const auto bad_count = temp_file("bad_count.txt", "a x\n");
  error = load_error(model, bad_count.string());
  EXPECT_NE(error.find("line 1: count \"x\" is not an integer"), std::string::npos) << error;

  const auto duplicate = temp_file("duplicate.txt", "a 1\n<pad> 1\n");
  error = load_error(model, duplicate.string());
  EXPECT_NE(error.find("line 2: duplicate symbol \"<pad>\""), std::string::npos) << error;

  const auto empty = temp_file("empty.txt", "");
  error = load_error(model, empty.string());
  EXPECT_NE(error.find(empty.string() + " is empty"), std::string::npos) << error;

  // A dictionary handed over as the model (and vice versa) is caught too.
  EXPECT_NE(load_error(dict, dict).find("not a readable SentencePiece model"), std::string::npos);
  EXPECT_NE(load_error(model, model).find("dictionary"), std::string::npos);
}

TEST(KosmosGTokenizer, OfficialTinyFixtureLoads) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = fs::path(kosmosg::test::shared_dir()) / "fixtures" / "kosmosg-official-tiny";
  const auto t = KosmosGTokenizer::from_files((dir / "sentencepiece.bpe.model").string(), (dir / "dict.txt").string());
  EXPECT_EQ(t.vocab_size(), 64007);
  EXPECT_EQ(t.encode(" a photo of dog"), (std::vector<int64_t>{10, 1121, 9, 1133}));
}

TEST(PromptLayout, TwoImagesAroundText) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto l = kosmosg::text::layout_prompt(tokenizer(), "<i> wearing <i> on the beach");
  EXPECT_EQ(l.num_images, 2u);
  ASSERT_EQ(l.tokens.size(), 137u);
  ASSERT_EQ(l.image_mask.size(), 137u);
  EXPECT_EQ(l.tokens, concat({{0}, image_span(64), {1679}, image_span(64), {20, 5, 2711}}));
  auto expected = range(2, 65);
  const auto second = range(69, 132);
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_EQ(ones_at(l.image_mask), expected);
}

TEST(PromptLayout, ClosingTagIsText) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto l = kosmosg::text::layout_prompt(tokenizer(), "<i> a photo of dog </i> in the snow");
  EXPECT_EQ(l.num_images, 1u);
  EXPECT_EQ(l.tokens, concat({{0}, image_span(64), {10, 1121, 9, 1133, 8001, 166, 409, 6785, 12, 5, 1842}}));
  EXPECT_EQ(ones_at(l.image_mask), range(2, 65));
}

TEST(PromptLayout, CountsPlaceholdersAndHonoursTheSlotLength) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto l = kosmosg::text::layout_prompt(tokenizer(), "a <i> and <i><i>, then <i>", 8);
  EXPECT_EQ(l.num_images, 4u);
  EXPECT_EQ(std::count(l.image_mask.begin(), l.image_mask.end(), 1), 32);
  EXPECT_EQ(std::count(l.tokens.begin(), l.tokens.end(), 64004), 4);
  EXPECT_EQ(std::count(l.tokens.begin(), l.tokens.end(), 64003), 36);
  const auto text_only = kosmosg::text::layout_prompt(tokenizer(), "a photo of a dog");
  EXPECT_EQ(text_only.num_images, 0u);
  EXPECT_EQ(text_only.tokens, (std::vector<int64_t>{0, 10, 1121, 9, 10, 1133}));
  EXPECT_EQ(kosmosg::text::layout_prompt(tokenizer(), "").tokens, std::vector<int64_t>{0});
  EXPECT_THROW(kosmosg::text::layout_prompt(tokenizer(), "<i>", 0), kosmosg::Error);
}

TEST(PromptLayout, NegativeTokensAndBatching) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  EXPECT_EQ(kosmosg::text::negative_tokens(tokenizer(), ""), std::vector<int64_t>{0});
  EXPECT_EQ(kosmosg::text::negative_tokens(tokenizer(), "dog."), (std::vector<int64_t>{0, 1133, 4}));

  const auto a = kosmosg::text::layout_prompt(tokenizer(), "<i>", 2);
  const auto b = kosmosg::text::layout_prompt(tokenizer(), "a dog");
  const auto batch = kosmosg::text::batch_prompts({a, b});
  EXPECT_EQ(batch.num_images, 1u);
  EXPECT_EQ(batch.tokens.scalar_type(), torch::kLong);
  EXPECT_EQ(batch.image_mask.scalar_type(), torch::kByte);
  EXPECT_TRUE(batch.tokens.equal(torch::tensor({0, 64003, 64003, 64003, 64004, 0, 10, 1133, 1, 1}, torch::kLong).view({2, 5})));
  EXPECT_TRUE(batch.image_mask.equal(torch::tensor({0, 0, 1, 1, 0, 0, 0, 0, 0, 0}, torch::kByte).view({2, 5})));
  EXPECT_THROW(kosmosg::text::batch_prompts({}), kosmosg::Error);
}

TEST(TrainingSequences, LaionAndInstructPix2PixCollate) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto laion = kosmosg::text::laion_sequence(tokenizer(), "a dog");
  EXPECT_EQ(laion.doc, (std::vector<int64_t>{0, 10, 1133, 2}));
  EXPECT_EQ(laion.input_mask, (std::vector<uint8_t>{0, 0, 0, 0}));
  EXPECT_EQ(laion.loss_mask, (std::vector<uint8_t>{0, 1, 1, 1}));

  const auto edit = kosmosg::text::instruct_pix2pix_sequence(tokenizer(), "a dog", " in the snow", 2);
  EXPECT_EQ(edit.doc, (std::vector<int64_t>{0, 10, 1133, 64003, 64003, 64003, 64004, 12, 5, 1842, 2}));
  EXPECT_EQ(edit.input_mask, (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0}));
  EXPECT_EQ(edit.loss_mask, (std::vector<uint8_t>{1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1}));
  const auto dropped = kosmosg::text::instruct_pix2pix_sequence(tokenizer(), "", "snow", 2);
  EXPECT_EQ(dropped.doc.front(), 0);
  EXPECT_EQ(dropped.doc[1], 64003);

  const auto batch = kosmosg::text::collate_training({laion, edit});
  EXPECT_TRUE(batch.src.equal(torch::tensor({0, 10, 1133, 1, 1, 1, 1, 1, 1, 1,  //
                                             0, 10, 1133, 64003, 64003, 64003, 64004, 12, 5, 1842},
                                            torch::kLong).view({2, 10})));
  EXPECT_TRUE(batch.target.equal(torch::tensor({10, 1133, 2, 1, 1, 1, 1, 1, 1, 1,  //
                                                10, 1133, 64003, 64003, 64003, 64004, 12, 5, 1842, 2},
                                               torch::kLong).view({2, 10})));
  EXPECT_TRUE(batch.input_mask.equal(torch::tensor({0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  //
                                                    0, 0, 0, 0, 1, 1, 0, 0, 0, 0},
                                                   torch::kByte).view({2, 10})));
  EXPECT_TRUE(batch.loss_mask.equal(torch::tensor({0, 1, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                                   1, 1, 1, 0, 0, 0, 1, 1, 1, 1},
                                                  torch::kByte).view({2, 10})));
  kosmosg::text::TrainingSequence too_short{{0}, {0}, {0}};
  EXPECT_THROW(kosmosg::text::collate_training({too_short}), kosmosg::Error);
}

TEST(SpmLibrary, LoadsInsideAProcessUsingLibTorch) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  // LibTorch's libprotobuf is live here; SentencePiece's own protobuf-lite must not clash with it.
  auto x = torch::randn({8, 8});
  auto y = torch::matmul(x, x.t());
  const auto ids = tokenizer().encode("a photo of a dog");
  auto t = torch::tensor(ids, torch::kLong);
  EXPECT_EQ(t.numel(), 5);
  EXPECT_EQ(t.sum().item<int64_t>(), 10 + 1121 + 9 + 10 + 1133);
  EXPECT_TRUE(y.isfinite().all().item<bool>());
}

TEST(SpmLibrary, EnvironmentOverrideIsCheckedAndUsed) {
  const std::string found = kosmosg::text::locate_spm_library();
  EXPECT_TRUE(fs::is_regular_file(found)) << found;
  ::setenv("KOSMOSG_SPM_LIBRARY", "/nonexistent/libkosmosg_spm.so", 1);
  std::string error;
  try {
    kosmosg::text::locate_spm_library();
  } catch (const kosmosg::Error& e) {
    error = e.what();
  }
  ::setenv("KOSMOSG_SPM_LIBRARY", found.c_str(), 1);
  EXPECT_EQ(kosmosg::text::locate_spm_library(), found);
  ::unsetenv("KOSMOSG_SPM_LIBRARY");
  EXPECT_NE(error.find("KOSMOSG_SPM_LIBRARY is /nonexistent/libkosmosg_spm.so"), std::string::npos) << error;
}
