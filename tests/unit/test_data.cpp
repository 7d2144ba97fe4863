// The data layer: JSONL manifests, the official TSV folders with their filters and random choices,
// collation, and the loader's determinism, resume, sharding, mixing and failure handling.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "data/internal.h"
#include "kosmosg/data/loader.h"
#include "kosmosg/io/image.h"
#include "support.h"

namespace fs = std::filesystem;
using namespace kosmosg;
using data::Sample;
using data::SampleOptions;
using data::StageKind;

namespace {

using kosmosg::test::temp_dir;
using kosmosg::test::write_text;

constexpr int64_t kBoi = 64003, kEoi = 64004;

const text::KosmosGTokenizer& golden_kosmosg_tokenizer() {
  static const auto t = [] {
    const std::string dir = test::shared_dir() + "/golden/kosmosg/tokenizer";
    return text::KosmosGTokenizer::from_files(dir + "/sentencepiece.bpe.model", dir + "/dict.txt");
  }();
  return t;
}

const text::CLIPTokenizer& clip_tokenizer() {
  static const auto t = text::CLIPTokenizer::from_folder(test::shared_dir() + "/golden/clip/tokenizer");
  return t;
}

// A small RGB image whose pixels depend on `value`, so that images are told apart.
at::Tensor image(int value, int64_t h = 12, int64_t w = 10) {
  auto img = torch::arange(h * w * 3, torch::kLong).remainder(7).add(value).remainder(256).to(torch::kByte);
  return img.view({h, w, 3});
}

std::string png_bytes(const at::Tensor& img) {
  const fs::path path = temp_dir("data", "png") / "x.png";
  io::write_png(path.string(), img);
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string base64(const std::string& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8) | uint8_t(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(alphabet[(v >> s) & 63]);
  }
  if (i + 1 == bytes.size()) {
    const uint32_t v = uint8_t(bytes[i]) << 16;
    out += std::string{alphabet[(v >> 18) & 63], alphabet[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == bytes.size()) {
    const uint32_t v = (uint8_t(bytes[i]) << 16) | (uint8_t(bytes[i + 1]) << 8);
    out += std::string{alphabet[(v >> 18) & 63], alphabet[(v >> 12) & 63], alphabet[(v >> 6) & 63], '='};
  }
  return out;
}

std::string b64_image(int value) { return base64(png_bytes(image(value))); }

SampleOptions options(StageKind stage) {
  SampleOptions o;
  o.stage = stage;
  o.tokenizer = &golden_kosmosg_tokenizer();
  o.image_token_length = 4;
  o.image_size = 8;
  o.target_size = 6;
  return o;
}

std::vector<int64_t> span(int64_t length) {
  std::vector<int64_t> s(static_cast<size_t>(length + 1), kBoi);
  s.push_back(kEoi);
  return s;
}

std::vector<uint8_t> u8(std::initializer_list<int> values) { return std::vector<uint8_t>(values.begin(), values.end()); }

Sample prepare(const data::Source& source, int64_t index, StageKind stage, uint64_t seed = 0) {
  std::mt19937_64 rng(seed);
  return source.prepare(index, rng, options(stage));
}

at::Tensor mllm(int value) { return io::clip_pixel_values(image(value), 8); }

void expect_same(const data::Batch& a, const data::Batch& b) {
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.captions, b.captions);
  EXPECT_EQ(a.ntokens, b.ntokens);
  for (auto [x, y] : {std::pair{a.src_tokens, b.src_tokens}, {a.target, b.target},
                      {a.img_gpt_input_mask, b.img_gpt_input_mask}, {a.gpt_loss_mask, b.gpt_loss_mask},
                      {a.images, b.images}, {a.target_images, b.target_images}}) {
    ASSERT_EQ(x.defined(), y.defined());
    if (x.defined()) EXPECT_TRUE(torch::equal(x, y));
  }
}

// A manifest of `count` records: text documents and one-image prompts, images in the same folder.
fs::path write_manifest(const fs::path& dir, int count, const std::string& name = "train.jsonl") {
  std::string lines;
  for (int i = 0; i < count; ++i) {
    if (i % 2) {
      io::write_png((dir / ("img" + std::to_string(i) + ".png")).string(), image(i * 9));
      lines += "{\"prompt\": \"<i> record " + std::to_string(i) + "\", \"images\": [\"img" + std::to_string(i) +
               ".png\"]}\n";
    } else {
      lines += "{\"text\": \"record " + std::to_string(i) + "\"}\n";
    }
  }
  write_text(dir / name, lines);
  return dir / name;
}

data::LoaderOptions loader_options(std::vector<data::SourceSpec> sources, StageKind stage = StageKind::LM) {
  data::LoaderOptions o;
  o.sources = std::move(sources);
  o.sample = options(stage);
  o.batch_size = 2;
  o.seed = 7;
  return o;
}

}  // namespace

// ---- JSONL ---------------------------------------------------------------------------------------

TEST(DataJsonl, TextRecordIsALaionDocument) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "jsonl");
  write_text(dir / "m.jsonl", "\n{\"text\": \"a photo of dog\"}\n\n");
  const auto source = data::open_source({"", (dir / "m.jsonl").string()});
  ASSERT_EQ(source->size(), 1);
  EXPECT_EQ(source->name(), "m");
  const auto s = prepare(*source, 0, StageKind::LM);
  EXPECT_EQ(s.sequence.doc, (std::vector<int64_t>{0, 10, 1121, 9, 1133, 2}));
  EXPECT_EQ(s.sequence.input_mask, u8({0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(s.sequence.loss_mask, u8({0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(s.caption, "a photo of dog");
  EXPECT_TRUE(s.images.empty());
  EXPECT_FALSE(s.target.defined());
  // Stage instruct needs a target, which a text document never has.
  test::expect_error([&] { prepare(*source, 0, StageKind::Instruct); }, {"m.jsonl line 2", "target"});
}

TEST(DataJsonl, InterleavedRecordUsesTheOpenImagesLayout) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "jsonl");
  io::write_png((dir / "a.png").string(), image(1));
  io::write_png((dir / "b.png").string(), image(2));
  io::write_png((dir / "t.png").string(), image(3, 9, 7));
  write_text(dir / "m.jsonl",
             "{\"prompt\": \"<i> wearing <i> on the beach\", \"images\": [\"a.png\", \"" + (dir / "b.png").string() +
                 "\"], \"target\": \"t.png\"}\n");
  const auto source = data::open_source({"", (dir / "m.jsonl").string()});
  const auto s = prepare(*source, 0, StageKind::Instruct);
  EXPECT_EQ(s.sequence.doc, test::concat({{0}, span(4), {1679}, span(4), {20, 5, 2711, 2}}));
  EXPECT_EQ(s.sequence.input_mask, u8({0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0}));
  EXPECT_EQ(s.sequence.loss_mask, u8({1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(s.caption, "wearing on the beach");
  ASSERT_EQ(s.images.size(), 2u);
  EXPECT_TRUE(torch::equal(s.images[0], mllm(1)));
  EXPECT_TRUE(torch::equal(s.images[1], mllm(2)));
  EXPECT_TRUE(torch::equal(s.target, io::vae_pixel_values(image(3, 9, 7), 6)));
  // Stage lm decodes the MLLM images but not the target; align takes no record with images.
  const auto lm = prepare(*source, 0, StageKind::LM);
  EXPECT_EQ(lm.images.size(), 2u);
  EXPECT_FALSE(lm.target.defined());
  test::expect_error([&] { prepare(*source, 0, StageKind::Align); }, {"line 1", "align"});
}

TEST(DataJsonl, CaptionRecordAndItsFilters) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "jsonl");
  io::write_png((dir / "t.png").string(), image(3));
  std::string many_a, long_caption;
  for (int i = 0; i < 80; ++i) many_a += "a ";
  for (int i = 0; i < 130; ++i) long_caption += "dog ";
  write_text(dir / "m.jsonl", "{\"prompt\": \"a photo of dog\", \"target\": \"t.png\"}\n"
                              "{\"prompt\": \"" + many_a + "\", \"target\": \"missing.png\"}\n"
                              "{\"prompt\": \"" + long_caption + "\", \"target\": \"t.png\"}\n");
  const auto source = data::open_source({"", (dir / "m.jsonl").string()});
  const auto s = prepare(*source, 0, StageKind::Instruct);
  EXPECT_EQ(s.sequence.doc, (std::vector<int64_t>{0, 10, 1121, 9, 1133, 2}));
  EXPECT_EQ(s.sequence.loss_mask, u8({0, 1, 1, 1, 1, 1}));
  EXPECT_TRUE(s.target.defined());
  EXPECT_FALSE(prepare(*source, 0, StageKind::LM).target.defined());
  // Align never decodes (the target of line 2 does not exist); 80 "a" are 80 SentencePiece tokens
  // (within 85) but 80 CLIP tokens (above 75), filtered only when a CLIP tokenizer is given.
  const auto align = prepare(*source, 1, StageKind::Align);
  EXPECT_EQ(align.sequence.doc.size(), 82u);
  auto with_clip = options(StageKind::Align);
  with_clip.clip_tokenizer = &clip_tokenizer();
  std::mt19937_64 rng(0);
  test::expect_error([&] { source->prepare(1, rng, with_clip); }, {"line 2", "80 CLIP tokens", "75"});
  test::expect_error([&] { prepare(*source, 1, StageKind::Instruct); }, {"line 2", "missing.png"});
  // More than 128 SentencePiece tokens are skipped in every stage, more than 85 in align.
  test::expect_error([&] { prepare(*source, 2, StageKind::LM); }, {"line 3", "130 SentencePiece tokens", "128"});
}

// "negatives": the t2i stage takes one of the listed captions per sample, drawn from the sample's
// own generator (so that a seed reproduces it); other stages leave it empty; a malformed list is
// refused by line.
TEST(DataJsonl, NegativesGiveTheTextToImageStageOneCaptionPerSample) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "jsonl");
  io::write_png((dir / "t.png").string(), image(3));
  write_text(dir / "m.jsonl",
             "{\"prompt\": \"a red circle next to a blue square\", \"target\": \"t.png\", "
             "\"negatives\": [\"a blue circle next to a red square\", \"a red circle  next to a red square\"]}\n"
             "{\"prompt\": \"a red circle\", \"target\": \"t.png\"}\n"
             "{\"prompt\": \"x\", \"target\": \"t.png\", \"negatives\": \"y\"}\n"
             "{\"prompt\": \"x\", \"target\": \"t.png\", \"negatives\": [\"\"]}\n");
  const auto source = data::open_source({"", (dir / "m.jsonl").string()});
  std::set<std::string> drawn;
  for (uint64_t seed = 0; seed < 16; ++seed) {
    std::mt19937_64 rng(seed), again(seed);
    const std::string negative = source->prepare(0, rng, options(StageKind::T2I)).negative;
    EXPECT_EQ(source->prepare(0, again, options(StageKind::T2I)).negative, negative);
    drawn.insert(negative);
  }
  EXPECT_EQ(drawn, (std::set<std::string>{"a blue circle next to a red square", "a red circle next to a red square"}));
  EXPECT_EQ(prepare(*source, 1, StageKind::T2I).negative, "");
  EXPECT_EQ(prepare(*source, 0, StageKind::Instruct).negative, "");
  test::expect_error([&] { prepare(*source, 2, StageKind::T2I); }, {"m.jsonl line 3", "'negatives'", "list of captions"});
  test::expect_error([&] { prepare(*source, 3, StageKind::T2I); }, {"m.jsonl line 4", "non-empty captions"});
  std::vector<data::Sample> samples{prepare(*source, 0, StageKind::T2I), prepare(*source, 1, StageKind::T2I)};
  const auto batch = data::collate(samples, "m");
  EXPECT_EQ(batch.negatives, (std::vector<std::string>{samples[0].negative, ""}));
}

TEST(DataJsonl, MalformedRecordsNameTheirLine) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "jsonl");
  io::write_png((dir / "a.png").string(), image(1));
  write_text(dir / "m.jsonl",
             "{\"prompt\": \"<i> and <i>\", \"images\": [\"a.png\"]}\n"
             "{\"prompt\": \"x\", \"image\": [\"a.png\"]}\n"
             "not json\n"
             "{\"text\": \"x\", \"target\": \"a.png\"}\n");
  const auto source = data::open_source({"jsonl", (dir / "m.jsonl").string()});
  test::expect_error([&] { prepare(*source, 0, StageKind::LM); }, {"m.jsonl line 1", "2 <i>", "1 images"});
  test::expect_error([&] { prepare(*source, 1, StageKind::LM); }, {"line 2", "unknown key 'image'"});
  test::expect_error([&] { prepare(*source, 2, StageKind::LM); }, {"line 3"});
  test::expect_error([&] { prepare(*source, 3, StageKind::LM); }, {"line 4", "text only"});
}

// ---- Specs and collation -------------------------------------------------------------------------

TEST(DataSource, ParsesSpecsAndGuessesFolderKinds) {
  auto s = data::parse_source_spec("laion:/data/laion:2.5");
  EXPECT_EQ(s.kind, "laion");
  EXPECT_EQ(s.path, "/data/laion");
  EXPECT_EQ(s.weight, 2.5);
  s = data::parse_source_spec("/a:b/m.jsonl");
  EXPECT_EQ(s.kind, "");
  EXPECT_EQ(s.path, "/a:b/m.jsonl");
  EXPECT_EQ(s.weight, 1);
  EXPECT_EQ(data::parse_source_spec("openimages:d:0").weight, 0);
  test::expect_error([] { data::parse_source_spec("d:-1"); }, {"weight -1"});

  const auto root = temp_dir("data", "kinds");
  for (const char* name : {"my_LAION_subset", "stuff"}) {
    write_text(root / name / "json" / "train.json", "[{\"source\": [\"a.tsv\"], \"name\": \"x\"}]");
    write_text(root / name / "a.tsv", "id\tcaption\t" + b64_image(1) + "\t512\t512\n");
  }
  EXPECT_EQ(data::open_source({"", (root / "my_LAION_subset").string() + "/"})->name(), "my_LAION_subset");
  test::expect_error([&] { data::open_source({"", (root / "stuff").string()}); }, {"KIND:", "laion"});
  EXPECT_EQ(data::open_source({"laion", (root / "stuff").string()})->size(), 1);
  test::expect_error([&] { data::open_source({"openimages", (root / "stuff").string()}); }, {"data/a.tsv"});
}

TEST(DataCollate, PadsAndStacks) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  Sample a, b;
  a.sequence = text::laion_sequence(golden_kosmosg_tokenizer(), "a photo of dog");
  a.caption = "a photo of dog";
  b.sequence = text::interleaved_sequence(golden_kosmosg_tokenizer(), {"", " in the snow"}, 4);
  b.images = {mllm(1)};
  b.caption = "in the snow";
  const auto batch = data::collate({a, b}, "src");
  EXPECT_EQ(batch.src_tokens.sizes(), (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(batch.target.sizes(), (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(batch.img_gpt_input_mask.scalar_type(), at::kByte);
  EXPECT_EQ(batch.gpt_loss_mask.scalar_type(), at::kByte);
  EXPECT_EQ(batch.src_tokens[0][5].item<int64_t>(), 1);  // padding
  EXPECT_EQ(batch.gpt_loss_mask[0][9].item<int>(), 1);
  EXPECT_EQ(batch.img_gpt_input_mask[1].sum().item<int64_t>(), 4);
  EXPECT_EQ(batch.images.sizes(), (std::vector<int64_t>{1, 3, 8, 8}));
  EXPECT_FALSE(batch.target_images.defined());
  EXPECT_EQ(batch.nsentences, 2);
  EXPECT_EQ(batch.ntokens, 6 + 11);
  EXPECT_EQ(batch.source, "src");
  a.target = torch::zeros({3, 6, 6});
  b.target = torch::ones({3, 6, 6});
  EXPECT_EQ(data::collate({a, b}, "src").target_images.sizes(), (std::vector<int64_t>{2, 3, 6, 6}));
}

// ---- Loader --------------------------------------------------------------------------------------

TEST(DataLoader, RestoreContinuesWithIdenticalBatches) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "loader");
  const auto first = write_manifest(dir, 7, "first.jsonl");
  const auto second = write_manifest(dir, 5, "second.jsonl");
  auto opts = loader_options({{"", first.string(), 1}, {"", second.string(), 2}});
  std::vector<data::Batch> reference;
  {
    data::Loader loader(opts);
    for (int i = 0; i < 6; ++i) reference.push_back(loader.next());
  }
  std::set<std::string> sources;
  for (const auto& b : reference) sources.insert(b.source);
  EXPECT_EQ(sources.size(), 2u);
  for (int64_t workers : {0, 2}) {
    SCOPED_TRACE(workers);
    opts.workers = workers;
    nlohmann::json state;
    {
      data::Loader loader(opts);
      for (int i = 0; i < 3; ++i) expect_same(loader.next(), reference[i]);
      state = loader.state();
    }
    EXPECT_EQ(state["batches"], 3);
    data::Loader resumed(opts);
    resumed.restore(nlohmann::json::parse(state.dump()));
    for (int i = 3; i < 6; ++i) expect_same(resumed.next(), reference[i]);
    EXPECT_EQ(resumed.stats().samples_read, 12);
  }
  auto other = opts;
  other.seed = 8;
  data::Loader mismatched(other);
  test::expect_error([&] { mismatched.restore(data::Loader(opts).state()); }, {"seed 7", "seed 8"});
}

TEST(DataLoader, RanksPartitionAnEpoch) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "shard");
  const auto manifest = write_manifest(dir, 11);
  std::multiset<std::string> seen;
  for (int64_t rank : {0, 1}) {
    auto opts = loader_options({{"", manifest.string()}});
    opts.batch_size = 1;
    opts.rank = rank;
    opts.world_size = 2;
    data::Loader loader(opts);
    for (int i = 0; i < (rank == 0 ? 6 : 5); ++i) seen.insert(loader.next().captions[0]);
    EXPECT_EQ(loader.state()["sources"][0]["epoch"], 1);
    EXPECT_EQ(loader.state()["sources"][0]["cursor"], 0);
  }
  std::set<std::string> unique(seen.begin(), seen.end());
  EXPECT_EQ(seen.size(), 11u);
  EXPECT_EQ(unique.size(), 11u);
}

TEST(DataLoader, RanksResumeWithAnotherWorldSizeWithoutSkipping) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "reshard");
  const auto manifest = write_manifest(dir, 13);
  auto opts = loader_options({{"", manifest.string()}});
  opts.batch_size = 1;
  // Two ranks read unevenly (rank 1 is two samples behind), then save.
  std::vector<nlohmann::json> states;
  std::multiset<std::string> seen;
  for (int64_t rank : {0, 1}) {
    auto o = opts;
    o.rank = rank;
    o.world_size = 2;
    data::Loader loader(o);
    for (int i = 0; i < (rank == 0 ? 4 : 2); ++i) seen.insert(loader.next().captions[0]);
    states.push_back(loader.state());
  }
  // Three ranks go on: together they finish the epoch, and nothing unread is skipped.
  std::multiset<std::string> after;
  for (int64_t rank : {0, 1, 2}) {
    auto o = opts;
    o.rank = rank;
    o.world_size = 3;
    data::Loader loader(o);
    loader.restore_from_ranks(states);
    while (loader.state()["sources"][0]["epoch"] == 0) after.insert(loader.next().captions[0]);
  }
  std::set<std::string> all(seen.begin(), seen.end());
  all.insert(after.begin(), after.end());
  EXPECT_EQ(all.size(), 13u);
  // Rank 0 had read elements 0, 2, 4, 6 and rank 1 elements 1, 3: elements from 5 on are read
  // again by the new ranks, and element 6, which rank 0 had read ahead, is the only repeat.
  EXPECT_EQ(seen.size() + after.size(), 14u);
  // The same number of ranks restores exactly.
  auto o = opts;
  o.rank = 1;
  o.world_size = 2;
  data::Loader exact(o);
  exact.restore_from_ranks(states);
  EXPECT_EQ(exact.state(), states[1]);
  test::expect_error([&] { exact.restore_from_ranks({states[1], states[0]}); }, {"rank order"});
}

TEST(DataLoader, MixesSourcesByWeight) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "mix");
  std::vector<data::SourceSpec> specs;
  for (auto [name, weight] : {std::pair{"never", 0.0}, {"one", 1.0}, {"three", 3.0}}) {
    write_text(dir / (std::string(name) + ".jsonl"), "{\"text\": \"x\"}\n{\"text\": \"y\"}\n");
    specs.push_back({"", (dir / (std::string(name) + ".jsonl")).string(), weight});
  }
  auto opts = loader_options(specs);
  opts.batch_size = 1;
  data::Loader loader(opts);
  std::map<std::string, int> counts;
  for (int i = 0; i < 400; ++i) ++counts[loader.next().source];
  EXPECT_EQ(counts["never"], 0);
  EXPECT_GT(counts["three"], 250);
  EXPECT_LT(counts["three"], 350);
  EXPECT_EQ(counts["one"] + counts["three"], 400);
}

TEST(DataLoader, SkipsAndCountsBadSamples) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "bad");
  const auto manifest = write_manifest(dir, 30);
  fs::remove(dir / "img5.png");
  auto opts = loader_options({{"", manifest.string()}});
  opts.batch_size = 1;
  data::Loader loader(opts);
  for (int i = 0; i < 29; ++i) EXPECT_NE(loader.next().captions[0], "record 5");
  EXPECT_EQ(loader.stats().samples_read, 30);
  EXPECT_EQ(loader.stats().samples_failed, 1);
  EXPECT_EQ(loader.state()["stats"]["samples_failed"], 1);

  // Half the records broken: the loader stops once more than 10% of 20 or more reads failed.
  for (int i = 1; i < 30; i += 2) fs::remove(dir / ("img" + std::to_string(i) + ".png"));
  data::Loader failing(opts);
  test::expect_error(
      [&] {
        for (int i = 0; i < 30; ++i) failing.next();
      },
      {"max_failure_fraction", "img"});
  EXPECT_GE(failing.stats().samples_read, 20);
}

// ---- Official TSV folders ------------------------------------------------------------------------

TEST(DataTsv, LaionFiltersAndStages) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "laion_data");
  std::string long_caption;
  for (int i = 0; i < 90; ++i) long_caption += "dog ";
  write_text(dir / "json" / "train.json", "[{\"source\": [\"part0.tsv\", \"part1.tsv\"], \"name\": \"laion\"}]");
  write_text(dir / "part0.tsv", "0\ta photo of dog\t" + b64_image(4) + "\t512\t400\r\n"
                                "1\tsmall\t" + b64_image(4) + "\t383\t512\n");
  write_text(dir / "part1.tsv", "\n2\tbad size\t" + b64_image(4) + "\t5l2\t512\n"
                                "3\t" + long_caption + "\t" + b64_image(4) + "\t512\t512\n"
                                "4\tcorrupt\tnot*base64!\t512\t512\n");
  const auto source = data::open_source({"laion", dir.string()});
  ASSERT_EQ(source->size(), 5);
  auto s = prepare(*source, 0, StageKind::Instruct);
  EXPECT_EQ(s.sequence.doc, (std::vector<int64_t>{0, 10, 1121, 9, 1133, 2}));
  EXPECT_EQ(s.sequence.loss_mask, u8({0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(s.caption, "a photo of dog");
  EXPECT_TRUE(s.images.empty());
  EXPECT_TRUE(torch::equal(s.target, io::vae_pixel_values(image(4), 6)));
  EXPECT_FALSE(prepare(*source, 0, StageKind::LM).target.defined());
  test::expect_error([&] { prepare(*source, 1, StageKind::LM); }, {"part0.tsv line 2", "383x512", "384"});
  EXPECT_EQ(prepare(*source, 1, StageKind::Align).caption, "small");
  test::expect_error([&] { prepare(*source, 2, StageKind::Align); }, {"part1.tsv line 2", "5l2"});
  EXPECT_EQ(prepare(*source, 3, StageKind::LM).sequence.doc.size(), 92u);
  test::expect_error([&] { prepare(*source, 3, StageKind::Align); }, {"line 3", "90 SentencePiece", "85"});
  EXPECT_FALSE(prepare(*source, 4, StageKind::Align).target.defined());  // align never decodes
  test::expect_error([&] { prepare(*source, 4, StageKind::Instruct); }, {"part1.tsv line 4 column 2"});
}

TEST(DataTsv, InstructPix2PixChoosesSeedAndDropsCaption) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "ip2p");
  write_text(dir / "json" / "train.json", "[{\"source\": [\"a.tsv\"]}]");
  write_text(dir / "data" / "a.tsv", "a photo of dog\tin the snow\t" + b64_image(10) + "\t" + b64_image(11) + "\t" +
                                         b64_image(20) + "\t" + b64_image(21) + "\n");
  const auto source = data::open_source({"", dir.string()});  // kind from the name
  std::set<std::pair<bool, uint64_t>> seen;
  for (uint64_t seed = 0; seed < 16; ++seed) {
    std::mt19937_64 expected(seed);
    const bool drop = data::detail::uniform(expected) < 0.5;
    const uint64_t choice = data::detail::uniform_below(expected, 2);
    seen.insert({drop, choice});
    const auto s = prepare(*source, 0, StageKind::Instruct, seed);
    EXPECT_EQ(s.sequence.doc, text::instruct_pix2pix_sequence(golden_kosmosg_tokenizer(), drop ? "" : "a photo of dog", "in the snow", 4).doc);
    ASSERT_EQ(s.images.size(), 1u);
    EXPECT_TRUE(torch::equal(s.images[0], mllm(10 * int(choice + 1))));
    EXPECT_TRUE(torch::equal(s.target, io::vae_pixel_values(image(10 * int(choice + 1) + 1), 6)));
  }
  EXPECT_EQ(seen.size(), 4u);
  test::expect_error([&] { prepare(*source, 0, StageKind::Align); }, {"a.tsv line 1", "align"});
}

TEST(DataTsv, OpenImagesSelectsEntitiesAsTheOfficialLoader) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("data", "openimages");
  write_text(dir / "json" / "train.json", "[{\"source\": [\"a.tsv\"]}]");
  // Tags: 0 sofa, 1 dog (matches "Dog's", case-insensitive), 2 red (a colour word), 3 cat (not in the
  // caption), 4 " bowl" (kept; its repetition at 7 keeps index 7, but "A Dog's" consumes its match),
  // 5 hat (a whole word of "hat stand": dropped), 6 hat stand, 7 " bowl".
  std::string row = "A Dog's bowl and a red sofa, near a hat stand.\tsofa,dog,red,cat, bowl,hat,hat stand, bowl\t" +
                    b64_image(100);
  for (int k = 0; k < 8; ++k) row += "\t" + b64_image(10 * k) + "\t" + b64_image(10 * k + 5);
  write_text(dir / "data" / "a.tsv", row + "\ndog on a sofa\tdog,sofa\t" + b64_image(100) + "\t" + b64_image(1) +
                                         "\t" + b64_image(2) + "\t" + b64_image(3) + "\t" + b64_image(4) + "\n");
  const auto source = data::open_source({"openimages", dir.string()});
  std::set<bool> drops;
  for (uint64_t seed = 0; seed < 8; ++seed) {
    std::mt19937_64 expected(seed);
    const bool drop = data::detail::uniform(expected) < 0.5;
    drops.insert(drop);
    const std::vector<std::string> texts =
        drop ? std::vector<std::string>{"A ", " bowl and a red ", ", near a ", "."}
             : std::vector<std::string>{"A Dog's ", " bowl and a red sofa ", ", near a hat stand ", "."};
    const auto s = prepare(*source, 0, StageKind::Instruct, seed);
    EXPECT_EQ(s.sequence.doc, text::interleaved_sequence(golden_kosmosg_tokenizer(), texts, 4).doc);
    EXPECT_EQ(s.sequence.loss_mask, text::interleaved_sequence(golden_kosmosg_tokenizer(), texts, 4).loss_mask);
    ASSERT_EQ(s.images.size(), 3u);
    int i = 0;
    for (int k : {1, 0, 6}) {  // dog, sofa, hat stand
      const bool white = data::detail::uniform(expected) <= 0.5;
      EXPECT_TRUE(torch::equal(s.images[i++], mllm(10 * k + (white ? 5 : 0)))) << "seed " << seed << " tag " << k;
    }
    EXPECT_TRUE(torch::equal(s.target, io::vae_pixel_values(image(100), 6)));
    EXPECT_EQ(s.caption, "A Dog's bowl and a red sofa, near a hat stand.");
  }
  EXPECT_EQ(drops.size(), 2u);
  // Dropping an entity that starts the caption leaves an empty fragment: the official loader skips it.
  for (uint64_t seed = 0; seed < 8; ++seed) {
    std::mt19937_64 expected(seed);
    if (data::detail::uniform(expected) < 0.5)
      test::expect_error([&] { prepare(*source, 1, StageKind::LM, seed); }, {"a.tsv line 2", "'dog'"});
    else
      EXPECT_EQ(prepare(*source, 1, StageKind::LM, seed).images.size(), 2u);
  }
}
