// The shapes world: deterministic generation, a held-out split no training line shows, manifests
// every stage loads, and the scorer: all right on the world's own images, still right on blurred,
// noisy, JPEG-compressed and resized ones, and wrong on wrong ones; and the model the repository ships.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <regex>
#include <set>

#include "kosmosg/data/loader.h"
#include "kosmosg/data/shapes.h"
#include "kosmosg/error.h"
#include "kosmosg/eval/shapes.h"
#include "kosmosg/io/image.h"
#include "support.h"

namespace fs = std::filesystem;
using namespace kosmosg;
using data::ShapeKind;

namespace {

using kosmosg::test::temp_dir;

// A folder removed when the test program exits.
data::ShapesOptions world_options(const fs::path& dir, uint64_t seed, int64_t count, int64_t test_count) {
  data::ShapesOptions o;
  o.out_dir = dir.string();
  o.seed = seed;
  o.count = count;
  o.test_count = test_count;
  o.quiet = true;
  return o;
}

// One world shared by the tests that only read it: 150 training scenes, 24 per test split (every
// held-out combination four times).
const fs::path& shared_world() {
  static const fs::path dir = [] {
    const auto d = temp_dir("shapes", "world");
    data::write_shapes_world(world_options(d, 11, 150, 24));
    return d;
  }();
  return dir;
}

std::vector<io::Json> read_lines(const fs::path& path) {
  std::vector<io::Json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(io::parse_json(line, path.string()));
  return out;
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Every file under `dir` (relative path -> bytes).
std::map<std::string, std::string> all_files(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = file_bytes(e.path());
  return out;
}

const char* kTrainManifests[] = {"captions.jsonl",   "text_to_image.jsonl", "interleaved.jsonl", "entities.jsonl",
                                 "one_entity.jsonl", "two_entity.jsonl",    "edit.jsonl"};
const char* kTestManifests[] = {"test_text.jsonl", "test_one_entity.jsonl", "test_two_entity.jsonl", "test_edit.jsonl"};

// (kind, colour, background) of every shape a caption names.
std::vector<std::tuple<std::string, std::string, std::string>> caption_combinations(const std::string& text) {
  static const std::regex caption("a (\\w+) (\\w+)(?: next to a (\\w+) (\\w+))? on a (\\w+) background");
  std::smatch m;
  if (!std::regex_search(text, m, caption)) return {};
  std::vector<std::tuple<std::string, std::string, std::string>> out{{m[2], m[1], m[5]}};
  if (m[3].matched) out.emplace_back(m[4], m[3], m[5]);
  return out;
}

std::string held_out_key(const std::string& kind, const std::string& color, const std::string& background) {
  return kind + "/" + color + "/" + background;
}

std::set<std::string> held_out_keys(const data::ShapesWorld& world) {
  std::set<std::string> out;
  for (const auto& h : world.held_out)
    out.insert(held_out_key(data::shape_kind_name(h.kind), world.palette[h.color].name,
                            world.palette[h.background].name));
  return out;
}

// A case scored on an image made from its target.
eval::ShapesVerdict verdict_on(const eval::ShapesCase& c, const data::ShapesWorld& world, const at::Tensor& image) {
  return eval::judge_shapes(c, eval::read_shapes_image(image, world));
}

// The training scenes as cases (text-only, from their captions), to score them like test cases.
std::vector<eval::ShapesCase> training_cases(const fs::path& dir) {
  std::vector<eval::ShapesCase> out;
  for (const auto& line : read_lines(dir / "text_to_image.jsonl")) {
    eval::ShapesCase c;
    c.split = "text";
    c.index = static_cast<int64_t>(out.size());
    c.words = c.prompt = line.at("prompt");
    c.target = (dir / line.at("target").get<std::string>()).string();
    for (const auto& [kind, color, background] : caption_combinations(c.prompt)) {
      c.shapes.emplace_back(kind, color);
      c.background = background;
    }
    out.push_back(c);
  }
  return out;
}

cv::Mat to_mat(const at::Tensor& t) {
  return cv::Mat(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), CV_8UC3, t.data_ptr()).clone();
}
at::Tensor to_tensor(const cv::Mat& m) { return at::from_blob(m.data, {m.rows, m.cols, 3}, at::kByte).clone(); }

}  // namespace

// ---- The world --------------------------------------------------------------------------------

TEST(ShapesWorld, HeldOutCombinationsAreTheDocumentedOnesAndLeaveEveryPairInTraining) {
  const auto world = data::ShapesWorld::create({"red", "green", "blue", "yellow"}, {"circle", "square", "triangle"}, 64, 6);
  EXPECT_EQ(held_out_keys(world), (std::set<std::string>{"circle/red/green", "square/green/blue",
                                                         "triangle/blue/yellow", "circle/blue/yellow",
                                                         "square/yellow/red", "triangle/red/green"}));
  for (size_t colors = 3; colors <= 7; ++colors)
    for (size_t kinds = 2; kinds <= 3; ++kinds) {
      std::vector<ShapeKind> k(kinds);
      for (size_t i = 0; i < kinds; ++i) k[i] = static_cast<ShapeKind>(i);
      const auto held = data::shapes_held_out(colors, k, 1000);
      EXPECT_GE(held.size(), kinds) << colors << " colours";
      // Every kind-colour, kind-background and colour-background pair keeps a training combination.
      std::set<std::pair<int, int>> kc, kb, cb;
      for (size_t ki = 0; ki < kinds; ++ki)
        for (int c = 0; c < static_cast<int>(colors); ++c)
          for (int b = 0; b < static_cast<int>(colors); ++b) {
            const data::ShapeCombination x{k[ki], c, b};
            if (c == b || std::find(held.begin(), held.end(), x) != held.end()) continue;
            kc.insert({int(ki), c}), kb.insert({int(ki), b}), cb.insert({c, b});
          }
      EXPECT_EQ(kc.size(), kinds * colors);
      EXPECT_EQ(kb.size(), kinds * colors);
      EXPECT_EQ(cb.size(), colors * (colors - 1));
    }
  // With one kind, a combination is its colour-background pair's only one: nothing can be held out.
  test::expect_error([] { data::ShapesWorld::create({"red", "green", "blue", "yellow"}, {"circle"}, 64, 1); },
                     {"1 held-out combinations asked for, but only 0"});
  test::expect_error([] { data::ShapesWorld::create({"red", "green", "blue", "yellow"}, {"circle", "square"}, 64, 50); },
                     {"50 held-out combinations", "only"});
  test::expect_error([] { data::ShapesWorld::create({"red", "pink", "blue"}, {"circle", "square"}, 64, 1); },
                     {"unknown colour 'pink'", "yellow"});
  test::expect_error([] { data::ShapesWorld::create({"red", "blue"}, {"circle", "square"}, 64, 1); }, {"at least 3"});
  test::expect_error([] { data::ShapesWorld::create({"red", "green", "blue"}, {"hexagon"}, 64, 1); },
                     {"unknown shape 'hexagon'"});
}

TEST(ShapesWorld, TheSameSeedWritesTheSameFiles) {
  const auto a = temp_dir("shapes", "seed_a"), b = temp_dir("shapes", "seed_b"), c = temp_dir("shapes", "seed_c");
  data::write_shapes_world(world_options(a, 5, 20, 3));
  data::write_shapes_world(world_options(b, 5, 20, 3));
  data::write_shapes_world(world_options(c, 6, 20, 3));
  const auto files_a = all_files(a), files_c = all_files(c);
  EXPECT_EQ(files_a, all_files(b));
  EXPECT_GT(files_a.size(), 40u);
  EXPECT_NE(files_a.at("captions.jsonl"), files_c.at("captions.jsonl"));
  EXPECT_NE(files_a.at("train/000000.png"), files_c.at("train/000000.png"));
  // Entity images do not depend on the seed.
  EXPECT_EQ(files_a.at("entities/red_circle.png"), files_c.at("entities/red_circle.png"));
  const auto json = io::read_json((a / "world.json").string());
  EXPECT_EQ(json.at("seed"), 5);
  EXPECT_EQ(json.at("held_out").size(), 6u);
  EXPECT_EQ(json.at("counts").at("train_scenes"), 20);
}

TEST(ShapesWorld, HeldOutCombinationsOnlyInTheTestManifests) {
  const auto& dir = shared_world();
  const auto world = data::ShapesWorld::load(dir.string());
  const auto held = held_out_keys(world);
  std::set<std::string> kinds, colors, backgrounds;
  std::set<std::string> training_images;
  for (const char* name : kTrainManifests) {
    const auto lines = read_lines(dir / name);
    ASSERT_FALSE(lines.empty()) << name;
    for (const auto& line : lines) {
      const std::string text = line.contains("text") ? line.at("text") : line.at("prompt");
      for (const auto& [kind, color, background] : caption_combinations(text)) {
        EXPECT_EQ(held.count(held_out_key(kind, color, background)), 0u) << name << ": " << text;
        kinds.insert(kind), colors.insert(color), backgrounds.insert(background);
      }
      std::vector<std::string> images;
      if (line.contains("images")) images = line.at("images").get<std::vector<std::string>>();
      if (line.contains("target")) images.push_back(line.at("target"));
      for (const auto& image : images)
        if (image.rfind("entities/", 0) != 0) training_images.insert(image);
      EXPECT_FALSE(line.contains("labels")) << name;
    }
  }
  // Each entity is named once, in its own manifest; the interleaved documents show scenes.
  const auto entity_lines = read_lines(dir / "entities.jsonl");
  EXPECT_EQ(entity_lines.size(), world.palette.size() * world.kinds.size());
  for (const auto& line : entity_lines) {
    const std::string prompt = line.at("prompt"), prefix = "<i> is a ";
    ASSERT_EQ(prompt.rfind(prefix, 0), 0u) << prompt;
    std::string name = prompt.substr(prefix.size());
    std::replace(name.begin(), name.end(), ' ', '_');
    EXPECT_EQ(line.at("images"), io::Json::array({"entities/" + name + ".png"})) << prompt;
  }
  for (const auto& line : read_lines(dir / "interleaved.jsonl"))
    EXPECT_EQ(line.at("images").at(0).get<std::string>().rfind("train/", 0), 0u) << line.dump();
  // Every kind, colour and background occurs in training on its own.
  EXPECT_EQ(kinds.size(), world.kinds.size());
  EXPECT_EQ(colors.size(), world.palette.size());
  EXPECT_EQ(backgrounds.size(), world.palette.size());
  // What the training images show (read by the scorer, proven on the ground truth below).
  for (const auto& image : training_images) {
    const auto reading = eval::read_shapes_image(io::read_image((dir / image).string()), world);
    for (const auto& s : reading.shapes)
      EXPECT_EQ(held.count(held_out_key(s.kind, s.color, reading.background)), 0u) << image;
  }
  // Every test case shows a held-out combination, in its labels and in its target.
  const auto cases = eval::read_shapes_cases(dir.string());
  ASSERT_EQ(cases.size(), 24u * 5);
  for (const auto& c : cases) {
    bool shows = false;
    for (const auto& [kind, color] : c.shapes) shows |= held.count(held_out_key(kind, color, c.background)) > 0;
    EXPECT_TRUE(shows) << c.split << " " << c.index;
    EXPECT_EQ(training_images.count(fs::relative(c.target, dir).string()), 0u);
  }
}

// The text-to-image lines of two shapes list hard negatives: the same kinds, places and background
// with the colours bound wrong (swapped, or one colour on both), never the caption itself nor a
// held-out combination; lines of one shape list none.
TEST(ShapesWorld, TwoShapeCaptionsListTheirColoursBoundWrong) {
  const auto& dir = shared_world();
  const auto world = data::ShapesWorld::load(dir.string());
  const auto held = held_out_keys(world);
  int64_t with = 0, two_shapes = 0;
  for (const auto& line : read_lines(dir / "text_to_image.jsonl")) {
    const std::string caption = line.at("prompt");
    const auto shown = caption_combinations(caption);
    two_shapes += shown.size() == 2;
    if (!line.contains("negatives")) {
      EXPECT_TRUE(shown.size() == 1 || std::get<1>(shown[0]) == std::get<1>(shown[1])) << caption;
      continue;
    }
    ++with;
    ASSERT_EQ(shown.size(), 2u) << caption;
    const std::set<std::string> colors{std::get<1>(shown[0]), std::get<1>(shown[1])};
    std::set<std::string> seen;
    for (const std::string negative : line.at("negatives")) {
      EXPECT_NE(negative, caption);
      EXPECT_TRUE(seen.insert(negative).second) << negative;
      const auto wrong = caption_combinations(negative);
      ASSERT_EQ(wrong.size(), 2u) << negative;
      for (size_t i = 0; i < 2; ++i) {
        EXPECT_EQ(std::get<0>(wrong[i]), std::get<0>(shown[i])) << negative;
        EXPECT_EQ(std::get<2>(wrong[i]), std::get<2>(shown[i])) << negative;
        EXPECT_EQ(colors.count(std::get<1>(wrong[i])), 1u) << negative;
        EXPECT_EQ(held.count(held_out_key(std::get<0>(wrong[i]), std::get<1>(wrong[i]), std::get<2>(wrong[i]))), 0u)
            << negative;
      }
    }
    EXPECT_FALSE(seen.empty()) << caption;
  }
  EXPECT_GT(with, two_shapes / 2);
}

TEST(ShapesWorld, ManifestsLoadForEveryStage) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto& dir = shared_world();
  const std::string tok = test::shared_dir() + "/golden/kosmosg/tokenizer";
  const auto tokenizer = text::KosmosGTokenizer::from_files(tok + "/sentencepiece.bpe.model", tok + "/dict.txt");
  const std::map<data::StageKind, std::vector<std::string>> stages{
      {data::StageKind::LM,
       {"captions.jsonl", "interleaved.jsonl", "entities.jsonl", "one_entity.jsonl", "two_entity.jsonl"}},
      {data::StageKind::Align, {"captions.jsonl", "text_to_image.jsonl", "test_text.jsonl"}},
      {data::StageKind::Instruct,
       {"text_to_image.jsonl", "one_entity.jsonl", "two_entity.jsonl", "edit.jsonl", "test_one_entity.jsonl",
        "test_two_entity.jsonl", "test_edit.jsonl"}}};
  for (const auto& [stage, manifests] : stages) {
    data::SampleOptions options;
    options.stage = stage;
    options.tokenizer = &tokenizer;
    options.image_token_length = 4;
    options.image_size = 16;
    options.target_size = 32;
    for (const auto& name : manifests) {
      const auto source = data::open_source({"", (dir / name).string()});
      for (int64_t i = 0; i < source->size(); ++i) {
        std::mt19937_64 rng(static_cast<uint64_t>(i));
        const auto sample = source->prepare(i, rng, options);
        EXPECT_EQ(sample.target.defined(), stage == data::StageKind::Instruct) << name << " " << i;
      }
    }
    data::LoaderOptions lo;
    for (const auto& name : manifests) lo.sources.push_back({"", (dir / name).string(), 1.0});
    lo.sample = options;
    lo.batch_size = 4;
    data::Loader loader(lo);
    for (int b = 0; b < 5; ++b) EXPECT_EQ(loader.next().nsentences, 4);
    EXPECT_EQ(loader.stats().samples_failed, 0);
    EXPECT_EQ(loader.stats().samples_filtered, 0);
  }
}

// ---- The scorer -------------------------------------------------------------------------------

TEST(ShapesScorer, TheWorldsOwnImagesScoreFullMarks) {
  const auto& dir = shared_world();
  const auto world = data::ShapesWorld::load(dir.string());
  const auto cases = eval::read_shapes_cases(dir.string());
  const auto scored = eval::score_shapes(cases, world, [](const eval::ShapesCase& c) {
    return std::pair{io::read_image(c.target), c.target};
  });
  const auto t = eval::tally_shapes(scored);
  for (const auto* rate : {&t.text_only.text, &t.text_only.subject, &t.one_entity.text, &t.one_entity.subject,
                           &t.one_entity.edit, &t.two_entity.text, &t.two_entity.subject, &t.two_entity.edit}) {
    EXPECT_GT(rate->total, 0);
    EXPECT_EQ(rate->right, rate->total);
  }
  EXPECT_EQ(t.text_only.edit.total, 0);
  // The training scenes too: the reading matches the caption in every image's PNG text.
  for (const auto& line : read_lines(dir / "text_to_image.jsonl")) {
    const auto target = (dir / line.at("target").get<std::string>()).string();
    const auto reading = eval::read_shapes_image(io::read_image(target), world);
    std::string words;
    for (size_t i = 0; i < reading.shapes.size(); ++i)
      words += (i ? " next to a " : "a ") + reading.shapes[i].color + " " + reading.shapes[i].kind;
    const auto expected = caption_combinations(line.at("prompt"));
    ASSERT_EQ(reading.shapes.size(), expected.size()) << target;
    EXPECT_EQ(reading.background, std::get<2>(expected[0])) << target;
    std::multiset<std::string> found, wanted;
    for (const auto& s : reading.shapes) found.insert(s.color + " " + s.kind);
    for (const auto& [kind, color, bg] : expected) wanted.insert(color + " " + kind);
    EXPECT_EQ(found, wanted) << target << ": read " << words;
  }
}

TEST(ShapesScorer, StaysRightOnBlurredNoisyCompressedAndResizedImages) {
  const auto& dir = shared_world();
  const auto world = data::ShapesWorld::load(dir.string());
  auto cases = eval::read_shapes_cases(dir.string());
  for (const auto& c : training_cases(dir)) cases.push_back(c);
  std::mt19937 rng(3);
  const std::map<std::string, std::function<cv::Mat(const cv::Mat&)>> perturbations{
      {"blur", [](const cv::Mat& m) { cv::Mat out; cv::GaussianBlur(m, out, cv::Size(5, 5), 1.2); return out; }},
      {"noise",
       [&rng](const cv::Mat& m) {
         cv::Mat noise(m.size(), CV_32FC3), out;
         cv::theRNG().state = rng();
         cv::randn(noise, 0, 20);
         m.convertTo(out, CV_32FC3);
         out += noise;
         out.convertTo(out, CV_8UC3);
         return out;
       }},
      {"jpeg",
       [](const cv::Mat& m) {
         std::vector<uchar> bytes;
         cv::Mat bgr;
         cv::cvtColor(m, bgr, cv::COLOR_RGB2BGR);
         cv::imencode(".jpg", bgr, bytes, {cv::IMWRITE_JPEG_QUALITY, 50});
         cv::cvtColor(cv::imdecode(bytes, cv::IMREAD_COLOR), bgr, cv::COLOR_BGR2RGB);
         return bgr;
       }},
      {"posterise",
       [](const cv::Mat& m) {
         cv::Mat levels(1, 256, CV_8U), out;
         for (int v = 0; v < 256; ++v) levels.at<uint8_t>(v) = static_cast<uint8_t>(v / 32 * 32 + 16);
         cv::LUT(m, levels, out);
         return out;
       }},
      {"resize32", [](const cv::Mat& m) { cv::Mat out; cv::resize(m, out, {32, 32}, 0, 0, cv::INTER_AREA); return out; }},
      {"resize128",
       [](const cv::Mat& m) { cv::Mat out; cv::resize(m, out, {128, 128}, 0, 0, cv::INTER_CUBIC); return out; }},
      {"resize512",
       [](const cv::Mat& m) { cv::Mat out; cv::resize(m, out, {512, 512}, 0, 0, cv::INTER_LINEAR); return out; }}};
  for (const auto& [name, perturb] : perturbations) {
    int64_t wrong = 0;
    for (const auto& c : cases) {
      const auto image = to_tensor(perturb(to_mat(io::read_image(c.target))));
      const auto reading = eval::read_shapes_image(image, world);
      const auto v = eval::judge_shapes(c, reading);
      const bool right = v.text && v.subject && (c.split != "edit" || v.edit);
      wrong += !right;
      std::string found = reading.background + ":";
      for (const auto& s : reading.shapes) found += " " + s.color + " " + s.kind + " " + std::to_string(s.area);
      EXPECT_TRUE(right) << name << " " << c.split << " " << c.index << " (" << c.words << "), read " << found;
    }
    std::printf("%-10s %lld/%zu right\n", name.c_str(), static_cast<long long>(cases.size() - wrong), cases.size());
  }
}

TEST(ShapesScorer, ReportsWrongImagesAsWrong) {
  const auto world = data::ShapesWorld::create({"red", "green", "blue", "yellow"}, {"circle", "square", "triangle"}, 64, 6);
  const data::Shape circle{ShapeKind::Circle, 0, 30, 34, 14};  // red
  const data::Scene scene{1, {circle}};                        // on green
  eval::ShapesCase c;
  c.split = "one_entity";
  c.background = "green";
  c.shapes = {{"circle", "red"}};
  auto v = verdict_on(c, world, data::draw_shapes_scene(world, scene));
  EXPECT_TRUE(v.text && v.subject);
  // Another background, another colour, another kind, nothing at all, the entity on white.
  v = verdict_on(c, world, data::draw_shapes_scene(world, {2, {circle}}));
  EXPECT_FALSE(v.text);
  EXPECT_TRUE(v.subject);
  auto blue = circle;
  blue.color = 2;
  EXPECT_FALSE(verdict_on(c, world, data::draw_shapes_scene(world, {1, {blue}})).subject);
  for (const auto kind : {ShapeKind::Square, ShapeKind::Triangle}) {
    auto other = circle;
    other.kind = kind;
    v = verdict_on(c, world, data::draw_shapes_scene(world, {1, {other}}));
    EXPECT_TRUE(v.text);
    EXPECT_FALSE(v.subject) << data::shape_kind_name(kind);
  }
  const auto empty = eval::read_shapes_image(data::draw_shapes_scene(world, {1, {}}), world);
  EXPECT_EQ(empty.background, "green");
  EXPECT_TRUE(empty.shapes.empty());
  const auto entity = eval::read_shapes_image(data::draw_shapes_entity(world, ShapeKind::Circle, 0), world);
  EXPECT_EQ(entity.background, "white");
  ASSERT_EQ(entity.shapes.size(), 1u);
  EXPECT_EQ(entity.shapes[0].kind, "circle");
  EXPECT_EQ(entity.shapes[0].color, "red");
  EXPECT_FALSE(verdict_on(c, world, at::full({64, 64, 3}, 128, at::kByte)).subject);
  // Two entities: both must be there.
  eval::ShapesCase two = c;
  two.split = "two_entity";
  two.shapes = {{"circle", "red"}, {"square", "blue"}};
  const data::Shape left{ShapeKind::Circle, 0, 16, 30, 10}, right{ShapeKind::Square, 2, 46, 30, 10};
  EXPECT_TRUE(verdict_on(two, world, data::draw_shapes_scene(world, {1, {left, right}})).subject);
  EXPECT_FALSE(verdict_on(two, world, data::draw_shapes_scene(world, {1, {left}})).subject);
  EXPECT_FALSE(verdict_on(two, world, data::draw_shapes_scene(world, {1, {left, left}})).subject);
  // An edit that leaves the input as it was fails; so does one that loses the subject.
  eval::ShapesCase edit = c;
  edit.split = "edit";
  edit.source_background = "blue";
  EXPECT_TRUE(verdict_on(edit, world, data::draw_shapes_scene(world, scene)).edit);
  EXPECT_FALSE(verdict_on(edit, world, data::draw_shapes_scene(world, {2, {circle}})).edit);
  EXPECT_FALSE(verdict_on(edit, world, data::draw_shapes_scene(world, {1, {}})).edit);
}

TEST(ShapesScorer, ConditionsReadAsTheNearestCaption) {
  const auto world = data::ShapesWorld::create({"red", "green", "blue", "yellow"}, {"circle", "square", "triangle"}, 64, 6);
  // A stand-in text encoder: each caption its own fixed random condition.
  auto fixed_condition = [](const std::string& caption) {
    auto g = at::detail::createCPUGenerator(std::hash<std::string>{}(caption));
    return at::randn({1, 77, 8}, g, at::TensorOptions().dtype(at::kFloat));
  };
  int64_t encoded = 0;
  auto caption_condition = [&](const std::string& caption) {
    ++encoded;
    return fixed_condition(caption);
  };
  auto near = [&](const std::string& caption) {
    auto g = at::detail::createCPUGenerator(7);
    return fixed_condition(caption) + 0.1 * at::randn({1, 77, 8}, g, at::TensorOptions().dtype(at::kFloat));
  };
  eval::ShapesCase one;
  one.split = "one_entity";
  one.background = "green";
  one.shapes = {{"circle", "red"}};
  eval::ShapesCase two = one;
  two.split = "two_entity";
  two.background = "yellow";
  two.shapes = {{"circle", "red"}, {"square", "blue"}};
  eval::ShapesCase edit = one;
  edit.split = "edit";
  edit.source_background = "blue";
  const std::map<std::string, std::string> nearest_to{
      {"one_entity", "a red square on a green background"},
      {"two_entity", "a blue square next to a red circle on a yellow background"},
      {"edit", "a red circle on a blue background"}};
  auto score = [&](const std::vector<eval::ShapesCase>& cases) {
    return eval::score_shapes_conditions(cases, world, [&](const eval::ShapesCase& c) { return near(nearest_to.at(c.split)); },
                                         caption_condition);
  };
  const auto scored = score({one, two, edit});
  ASSERT_EQ(scored.size(), 3u);
  // 4 backgrounds x 9 shapes of another colour, then 4 x 9 x 9 pairs, each encoded once.
  EXPECT_EQ(encoded, 4 * 9 + 4 * 9 * 9);
  EXPECT_TRUE(scored[0].verdict.text);
  EXPECT_FALSE(scored[0].verdict.subject);
  ASSERT_EQ(scored[0].found.shapes.size(), 1u);
  EXPECT_EQ(scored[0].found.shapes[0].kind, "square");
  EXPECT_EQ(scored[0].found.shapes[0].color, "red");
  EXPECT_GT(scored[0].found.shapes[0].confidence, 0.5);
  EXPECT_LE(scored[0].found.shapes[0].confidence, 1.0);
  EXPECT_TRUE(scored[1].verdict.text && scored[1].verdict.subject) << "the entities in either order";
  EXPECT_FALSE(scored[2].verdict.text);
  EXPECT_TRUE(scored[2].verdict.subject);
  EXPECT_FALSE(scored[2].verdict.edit) << "the input's background kept";
  const auto right = eval::score_shapes_conditions(
      {one, edit}, world, [&](const eval::ShapesCase&) { return near("a red circle on a green background"); },
      caption_condition);
  EXPECT_TRUE(right[0].verdict.text && right[0].verdict.subject);
  EXPECT_TRUE(right[1].verdict.edit);
  try {
    eval::score_shapes_conditions(
        {one}, world, [](const eval::ShapesCase&) { return at::zeros({1, 77, 16}); }, caption_condition);
    ADD_FAILURE() << "a condition of another width was compared";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[1, 77, 8]"), std::string::npos) << e.what();
  }
}

// ---- The command line -------------------------------------------------------------------------

TEST(ShapesCli, DataShapesAndEvalGroundTruth) {
  const auto dir = temp_dir("shapes", "cli");
  auto r = test::run_cli("data shapes --out " + (dir / "world").string() + " --count 12 --test-count 3 --seed 4");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("held out"), std::string::npos) << r.output;
  EXPECT_EQ(read_lines(dir / "world" / "text_to_image.jsonl").size(), 12u);
  EXPECT_EQ(read_lines(dir / "world" / "test_one_entity.jsonl").size(), 3u);
  EXPECT_EQ(read_lines(dir / "world" / "test_text.jsonl").size(), 6u);

  r = test::run_cli("eval shapes --ground-truth --data " + (dir / "world").string() + " --out " +
                    (dir / "eval").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("100.0% (6/6)"), std::string::npos) << r.output;
  const auto report = io::read_json((dir / "eval" / "report.json").string());
  EXPECT_EQ(report.at("scores").at("ground-truth").at("two-entity").at("editing_success").at("rate"), 1.0);
  EXPECT_EQ(report.at("cases").size(), 15u);
  int64_t one_entity_cases = 0;
  for (const auto& [combination, row] : report.at("by_combination").at("ground-truth").at("one-entity").items()) {
    EXPECT_NE(combination.find(" on "), std::string::npos) << combination;
    EXPECT_EQ(row.at("subject_fidelity").at("right"), row.at("subject_fidelity").at("total")) << combination;
    one_entity_cases += row.at("subject_fidelity").at("total").get<int64_t>();
  }
  EXPECT_EQ(one_entity_cases, 3);

  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"--count 0", "count is 0"},
           {"--colors red,pink,blue", "unknown colour 'pink'"},
           {"--shapes circle,star", "unknown shape 'star'"},
           {"--size 8", "image size 8"}}) {
    r = test::run_cli("data shapes --out " + (dir / "bad").string() + " " + args);
    EXPECT_NE(r.status, 0) << args;
    EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
  }
  r = test::run_cli("eval shapes --data " + (dir / "world").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--ground-truth"), std::string::npos) << r.output;
  r = test::run_cli("eval shapes --conditions --model " + (dir / "world").string() + " --data " + (dir / "world").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("has no kosmosg/ folder"), std::string::npos) << r.output;
  r = test::run_cli("eval shapes --ground-truth --data " + (dir / "nothing").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("world.json"), std::string::npos) << r.output;
}

TEST(ShapesCli, EvalGeneratesWithAModelAndTheTextToImageBaseline) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto dir = temp_dir("shapes", "cli_model");
  const fs::path fixtures = fs::path(test::shared_dir()) / "fixtures";
  const fs::path model = dir / "model", world = dir / "world", out = dir / "eval";
  auto r = test::run_cli("convert " + (fixtures / "kosmosg-official-tiny" / "checkpoint_tiny.pt").string() + " " +
                         model.string() + " --sizes " + (fixtures / "kosmosg-official-tiny" / "sizes.json").string());
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* part : {"text_encoder", "tokenizer"})
    fs::copy(fixtures / "tiny-sd15" / part, model / part, fs::copy_options::recursive);
  r = test::run_cli("data shapes --quiet --out " + world.string() + " --count 4 --test-count 2");
  ASSERT_EQ(r.status, 0) << r.output;
  r = test::run_cli("eval shapes --quiet --model " + model.string() + " --data " + world.string() + " --out " +
                    out.string() + " --limit 1 --steps 2 --threads 1");
  ASSERT_EQ(r.status, 0) << r.output;
  // The tiny model's images are noise: only that everything ran and was written matters.
  const auto report = io::read_json((out / "report.json").string());
  EXPECT_EQ(report.at("cases").size(), 8u);
  EXPECT_TRUE(report.at("scores").contains("kosmosg"));
  EXPECT_TRUE(report.at("scores").contains("baseline"));
  EXPECT_EQ(report.at("scores").at("kosmosg").at("one-entity").at("text_fidelity").at("total"), 1);
  for (const char* system : {"kosmosg", "baseline"})
    for (const char* split : {"text", "one_entity", "two_entity", "edit"})
      EXPECT_TRUE(fs::exists(out / system / split / "000000.png")) << system << " " << split;
  // The default samples the four prompts of each system together; one at a time makes the same images.
  r = test::run_cli("eval shapes --quiet --model " + model.string() + " --data " + world.string() + " --out " +
                    (dir / "one_by_one").string() + " --limit 1 --steps 2 --threads 1 --batch 1");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* system : {"kosmosg", "baseline"})
    for (const char* split : {"text", "one_entity", "two_entity", "edit"}) {
      const auto batched = io::read_image((out / system / split / "000000.png").string()).to(at::kInt);
      const auto alone = io::read_image((dir / "one_by_one" / system / split / "000000.png").string()).to(at::kInt);
      EXPECT_LE((batched - alone).abs().max().item<int>(), 1) << system << " " << split;
    }
  // Scoring the saved images again gives the same verdicts.
  r = test::run_cli("eval shapes --images " + (out / "kosmosg").string() + " --data " + world.string() +
                    " --limit 1 --out " + (dir / "rescored").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const auto rescored = io::read_json((dir / "rescored" / "report.json").string());
  for (size_t i = 0; i < 4; ++i)
    for (const char* key : {"text", "subject", "edit"})
      EXPECT_EQ(rescored.at("cases")[i].at(key), report.at("cases")[i].at(key)) << i << " " << key;
  r = test::run_cli("eval shapes --images " + (out / "kosmosg").string() + " --data " + world.string() + " --out " +
                    (dir / "rescored").string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("000001.png does not exist"), std::string::npos) << r.output;
  // A text-to-image folder (no kosmosg/) scores its baseline alone, and cannot drop it.
  const fs::path decoder = dir / "decoder";
  fs::create_directories(decoder);
  for (const auto& e : fs::directory_iterator(model))
    if (e.path().filename() != "kosmosg") fs::copy(e.path(), decoder / e.path().filename(), fs::copy_options::recursive);
  // Its generation.json sets what the command line leaves unset.
  std::ofstream(decoder / "generation.json") << R"({"steps": 3, "sampler": "euler-a", "guidance": 4.0})";
  r = test::run_cli("eval shapes --quiet --model " + decoder.string() + " --data " + world.string() + " --out " +
                    (dir / "decoder_eval").string() + " --limit 1 --steps 2 --threads 1");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto decoder_report = io::read_json((dir / "decoder_eval" / "report.json").string());
  EXPECT_EQ(decoder_report.at("settings").at("steps"), 2);
  EXPECT_EQ(decoder_report.at("settings").at("sampler"), "euler-a");
  EXPECT_EQ(decoder_report.at("settings").at("guidance"), 4.0);
  EXPECT_FALSE(decoder_report.at("scores").contains("kosmosg"));
  EXPECT_TRUE(decoder_report.at("scores").contains("baseline"));
  EXPECT_FALSE(fs::exists(dir / "decoder_eval" / "kosmosg"));
  r = test::run_cli("eval shapes --quiet --no-baseline --model " + decoder.string() + " --data " + world.string() +
                    " --out " + (dir / "decoder_eval2").string() + " --limit 1 --steps 2 --threads 1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("has no kosmosg/ folder"), std::string::npos) << r.output;
}

// The model the repository ships (models/shapes, from scripts/shapes_recipe.sh): the README's
// first command draws the entity in a context the training never showed it in (a blue triangle on
// yellow is held out), and on the first held-out prompt of each combination (the recipe world's:
// `data shapes --seed 0` writes the same test prompts whatever the count) its scores stay within
// one prompt of what the release measured there at its generation.json's guidance of 4 (one-entity
// text 6/6 and subject 5/6, two-entity text 6/6 and subject 5/6, text-only text 12/12), the slack
// for rounding between LibTorch builds.
TEST(ShippedShapesModel, DrawsTheEntityInANewContextAndKeepsItsScores) {
  const fs::path root = fs::path(__FILE__).parent_path().parent_path().parent_path();
  const fs::path model = root / "models" / "shapes", dir = temp_dir("shapes", "shipped");
  ASSERT_TRUE(fs::exists(model / "kosmosg" / "model.safetensors")) << model;
  auto r = test::run_cli("generate --model " + model.string() + " --prompt '<i> on a yellow background' --image " +
                         (root / "assets" / "blue_triangle.png").string() + " --seed 1 --threads 2 --out " +
                         (dir / "first.png").string());
  ASSERT_EQ(r.status, 0) << r.output;
  const fs::path world = dir / "world";
  r = test::run_cli("data shapes --quiet --out " + world.string() + " --count 1 --test-count 6 --seed 0");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto reading = eval::read_shapes_image(io::read_image((dir / "first.png").string()),
                                               data::ShapesWorld::load(world.string()));
  EXPECT_EQ(reading.background, "yellow");
  ASSERT_FALSE(reading.shapes.empty());
  EXPECT_EQ(reading.shapes[0].color, "blue");
  EXPECT_EQ(reading.shapes[0].kind, "triangle");

  r = test::run_cli("eval shapes --quiet --no-baseline --model " + model.string() + " --data " + world.string() +
                    " --out " + (dir / "eval").string() + " --threads 2");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto scores = io::read_json((dir / "eval" / "report.json").string()).at("scores").at("kosmosg");
  auto right = [&](const char* row, const char* measure) { return scores.at(row).at(measure).at("right").get<int>(); };
  ASSERT_EQ(scores.at("one-entity").at("text_fidelity").at("total"), 6);
  EXPECT_GE(right("one-entity", "text_fidelity"), 5);
  EXPECT_GE(right("one-entity", "subject_fidelity"), 4);
  EXPECT_GE(right("two-entity", "text_fidelity"), 5);
  EXPECT_GE(right("two-entity", "subject_fidelity"), 4);
  EXPECT_GE(right("text-only", "text_fidelity"), 11);

  r = test::run_cli("eval shapes --quiet --conditions --model " + model.string() + " --data " + world.string() +
                    " --out " + (dir / "conditions").string() + " --threads 2");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto conditions = io::read_json((dir / "conditions" / "report.json").string()).at("scores").at("conditions");
  EXPECT_GE(conditions.at("one-entity").at("subject_fidelity").at("right").get<int>(), 5) << r.output;
  EXPECT_GE(conditions.at("one-entity").at("text_fidelity").at("right").get<int>(), 5) << r.output;
}
