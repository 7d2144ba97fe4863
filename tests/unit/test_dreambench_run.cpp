#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <opencv2/imgcodecs.hpp>

#include "kosmosg/error.h"
#include "kosmosg/eval/dreambench.h"
#include "kosmosg/eval/scores.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/dino.h"
#include "kosmosg/text/clip_tokenizer.h"
#include "support.h"

namespace fs = std::filesystem;
namespace eval = kosmosg::eval;
namespace io = kosmosg::io;
namespace models = kosmosg::models;
using kosmosg::io::Json;

namespace {

using kosmosg::test::shared_path;
using kosmosg::test::error_of;
using kosmosg::test::read_text;

void write_json(const fs::path& path, const Json& json) { std::ofstream(path) << json.dump(1); }

void randomise(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.normal_(0.0, 0.3);
}

// A smooth colour picture with a bright square, written through OpenCV (BGR).
void write_picture(const fs::path& path, int width, int height, int seed) {
  cv::Mat img(height, width, CV_8UC3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      img.at<cv::Vec3b>(y, x) = {static_cast<uchar>((x * 255 / width + seed * 40) % 256),
                                 static_cast<uchar>(y * 255 / height),
                                 static_cast<uchar>((x + y + seed * 70) % 256)};
  img(cv::Rect(width / 4, height / 4, width / 4, height / 4)).setTo(cv::Scalar(250, 250, 250));
  ASSERT_TRUE(cv::imwrite(path.string(), img));
}

// The tiny benchmark: two subjects (one live, one object), two prompts each, reference images
// in PNG and JPEG, and random tiny CLIP and DINO models in the user-facing file formats.
class DreamBench : public ::testing::Test {
 protected:
  void SetUp() override { KOSMOSG_REQUIRE_SHARED_DATA(); }
  static void SetUpTestSuite() {
    KOSMOSG_REQUIRE_SHARED_DATA();
    root_ = new fs::path(fs::temp_directory_path() /
                         ("kosmosg_dreambench_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_ / "data" / "cat");
    fs::create_directories(*root_ / "data" / "teapot");
    fs::create_directories(*root_ / "clip");
    write_json(*root_ / "spec.json",
               Json{{"object_subjects", {{"teapot", "teapot"}}},
                    {"live_subjects", {{"cat", "cat"}}},
                    {"reference_image", {{"teapot", "01.jpg"}, {"cat", "00.png"}}},
                    {"object_metric_prompts", {"a {} in the snow", "a red {}"}},
                    {"object_input_prompts", {"{} in the snow", "{}, red"}},
                    {"live_metric_prompts", {"a {} in the jungle", "a {} wearing a santa hat"}},
                    {"live_input_prompts", {"{} in the jungle", "{} wearing a santa hat"}}});
    write_picture(*root_ / "data" / "cat" / "00.png", 300, 260, 1);
    write_picture(*root_ / "data" / "teapot" / "01.jpg", 240, 331, 2);

    torch::manual_seed(0);
    const Json clip_config{{"projection_dim", 8},
                           {"text_config",
                            {{"hidden_size", 16},
                             {"intermediate_size", 32},
                             {"num_hidden_layers", 1},
                             {"num_attention_heads", 2},
                             {"eos_token_id", 2}}},
                           {"vision_config",
                            {{"hidden_size", 16},
                             {"intermediate_size", 32},
                             {"num_hidden_layers", 1},
                             {"num_attention_heads", 2},
                             {"image_size", 224},
                             {"patch_size", 32}}}};
    write_json(*root_ / "clip" / "config.json", clip_config);
    clip_ = new models::CLIPModel(models::CLIPConfig::from_json(clip_config));
    randomise(**clip_);
    (*clip_)->eval();
    io::save_safetensors((*root_ / "clip" / "model.safetensors").string(), io::state_dict(**clip_));
    for (const char* file : {"vocab.json", "merges.txt"})
      fs::copy_file(shared_path() / "golden" / "clip" / "tokenizer" / file, *root_ / "clip" / file);

    const Json dino_config{{"embed_dim", 16}, {"depth", 1}, {"num_heads", 2}};
    write_json(*root_ / "dino.json", dino_config);
    dino_ = new models::DinoViT(models::DinoViTConfig::from_json(dino_config));
    randomise(**dino_);
    (*dino_)->eval();
    io::save_safetensors((*root_ / "dino.safetensors").string(), io::state_dict(**dino_));
  }

  static void TearDownTestSuite() {
    if (!root_) return;
    fs::remove_all(*root_);
    delete clip_;
    delete dino_;
    delete root_;
  }

  eval::DreamBenchOptions options(const std::string& out) const {
    eval::DreamBenchOptions o;
    o.spec_path = (*root_ / "spec.json").string();
    o.data_dir = (*root_ / "data").string();
    o.output_dir = (*root_ / out).string();
    o.clip_dir = (*root_ / "clip").string();
    o.dino_weights = (*root_ / "dino.safetensors").string();
    o.dino_config = (*root_ / "dino.json").string();
    o.images_per_prompt = 2;
    o.show_progress = false;
    return o;
  }

  // A deterministic stand-in for Kosmos-G: the reference image at 64x64 plus noise that depends
  // on the prompt, the seed and the image index; counts its calls.
  eval::GenerateFn fake_generator() {
    return [this](const std::string& prompt, const std::string& reference, int64_t n,
                  uint64_t seed) {
      ++calls_;
      EXPECT_NE(prompt.find("<i>"), std::string::npos);
      const auto base = io::resize(io::read_image(reference), 64, 64, io::Resample::Bilinear);
      torch::manual_seed(seed + std::hash<std::string>{}(prompt) % 1000);
      std::vector<at::Tensor> images;
      for (int64_t k = 0; k < n; ++k)
        images.push_back((base.to(torch::kInt) + torch::randint(-60, 61, base.sizes(), torch::kInt))
                             .clamp(0, 255)
                             .to(torch::kByte));
      return images;
    };
  }

  static fs::path* root_;
  static models::CLIPModel* clip_;
  static models::DinoViT* dino_;
  int calls_ = 0;
};

fs::path* DreamBench::root_ = nullptr;
models::CLIPModel* DreamBench::clip_ = nullptr;
models::DinoViT* DreamBench::dino_ = nullptr;

std::vector<double> all_scores(const eval::DreamBenchResult& r) {
  std::vector<double> out;
  for (const auto& image : r.images)
    out.insert(out.end(), {image.scores.dino, image.scores.clip_i, image.scores.clip_t});
  return out;
}

}  // namespace

TEST(DreamBenchSpec, BuiltInSpecIsTheOfficialBenchmark) {
  const auto spec = eval::DreamBenchSpec::load("");
  ASSERT_EQ(spec.subjects.size(), 30u);
  int live = 0;
  for (const auto& s : spec.subjects) {
    EXPECT_EQ(s.prompts.size(), 25u) << s.name;
    live += s.live;
  }
  EXPECT_EQ(live, 9);
  const auto& dog = spec.subject("dog");
  EXPECT_TRUE(dog.live);
  EXPECT_EQ(dog.reference_image, "02.jpg");
  EXPECT_EQ(dog.prompts[0].input, "<i> in the jungle");
  EXPECT_EQ(dog.prompts[0].metric, "a dog in the jungle");
  EXPECT_EQ(dog.prompts[11].input, "<i> wearing a santa hat");
  const auto& bear = spec.subject("bear_plushie");
  EXPECT_FALSE(bear.live);
  EXPECT_EQ(bear.prompts[20].input, "<i>, red");
  EXPECT_EQ(bear.prompts[20].metric, "a red stuffed animal");
  EXPECT_EQ(bear.prompts[24].metric, "a cube shaped stuffed animal");
  EXPECT_NE(error_of([&] { spec.subject("dragon"); }).find("dog2"), std::string::npos);
}

TEST(DreamBenchSpec, InconsistenciesAreErrors) {
  const auto dir =
      fs::temp_directory_path() / ("kosmosg_dreambench_spec_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const Json good{
      {"object_subjects", {{"can", "can"}}},        {"live_subjects", Json::object()},
      {"reference_image", {{"can", "01.jpg"}}},     {"object_metric_prompts", {"a {} in the snow"}},
      {"object_input_prompts", {"{} in the snow"}}, {"live_metric_prompts", {"a {} in the snow"}},
      {"live_input_prompts", {"{} in the snow"}}};
  const auto error = [&](const std::function<void(Json&)>& edit) {
    Json json = good;
    edit(json);
    write_json(dir / "spec.json", json);
    return error_of([&] { eval::DreamBenchSpec::load((dir / "spec.json").string()); });
  };
  write_json(dir / "spec.json", good);
  EXPECT_NO_THROW(eval::DreamBenchSpec::load((dir / "spec.json").string()));
  EXPECT_NE(
      error([](Json& j) { j["object_input_prompts"] = {"in the snow"}; }).find("exactly one {}"),
      std::string::npos);
  EXPECT_NE(
      error([](Json& j) { j["reference_image"] = Json::object(); }).find("'can' has no entry"),
      std::string::npos);
  EXPECT_NE(error([](Json& j) {
              j["live_subjects"] = {{"can", "can"}};
            }).find("both an object and a live"),
            std::string::npos);
  EXPECT_NE(error([](Json& j) {
              j["object_input_prompts"].push_back("{}, red");
            }).find("one input prompt per"),
            std::string::npos);
  EXPECT_NE(error([](Json& j) { j["reference_image"]["can"] = "../x.jpg"; }).find("file name"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(DreamBenchPreprocessing, ClipProcessorCropsWithFloorOffsets) {
  // Shorter side already 224: only the crop acts. (299 - 224) / 2 = 37.5: transformers crops at
  // 37, torchvision's round at 38.
  const auto img = torch::randint(0, 256, {224, 299, 3}, torch::kInt).to(torch::kByte);
  const auto hf = eval::clip_processor_pixel_values(img);
  EXPECT_TRUE(hf.equal(io::clip_pixel_values(img.slice(1, 37, 261))));
  EXPECT_FALSE(hf.equal(io::clip_pixel_values(img)));
  EXPECT_TRUE(io::clip_pixel_values(img).equal(io::clip_pixel_values(img.slice(1, 38, 262))));
}

TEST_F(DreamBench, GeneratesScoresAndResumes) {
  const auto o = options("out");
  const auto first = eval::run_dreambench(o, fake_generator());
  EXPECT_EQ(calls_, 4);  // 2 subjects x 2 prompts, one batch each
  EXPECT_EQ(first.generated, 8);
  EXPECT_EQ(first.reused, 0);
  ASSERT_EQ(first.images.size(), 8u);
  const fs::path out = o.output_dir;
  EXPECT_EQ(first.images[0].file, "cat/00_0.png");
  EXPECT_EQ(first.images[0].metric_prompt, "a cat in the jungle");
  EXPECT_EQ(first.images[7].file, "teapot/01_1.png");
  EXPECT_EQ(first.images[7].prompt, "<i>, red");
  for (const auto& image : first.images) EXPECT_TRUE(fs::is_regular_file(out / image.file));
  const auto text = io::read_png_text((out / "teapot" / "01_1.png").string());
  EXPECT_EQ(text.at("prompt"), "<i>, red");
  EXPECT_EQ(text.at("metric_prompt"), "a red teapot");
  EXPECT_EQ(text.at("subject"), "teapot");
  EXPECT_EQ(text.at("seed"), "0");

  // scores.jsonl and summary.json agree with the returned result.
  std::ifstream lines(out / "scores.jsonl");
  std::string line;
  std::vector<Json> rows;
  while (std::getline(lines, line)) rows.push_back(Json::parse(line));
  ASSERT_EQ(rows.size(), 8u);
  EXPECT_EQ(rows[3]["file"], first.images[3].file);
  EXPECT_DOUBLE_EQ(rows[3]["clip_t"].get<double>(), first.images[3].scores.clip_t);
  std::vector<double> dino;
  for (const auto& image : first.images) dino.push_back(image.scores.dino);
  const auto summary = Json::parse(read_text(out / "summary.json"));
  EXPECT_DOUBLE_EQ(summary["DINO"].get<double>(), eval::score_metric(torch::tensor(dino)) / 100);
  EXPECT_DOUBLE_EQ(summary["DINO"].get<double>(), first.dino);
  EXPECT_DOUBLE_EQ(summary["CLIP-I"].get<double>(), first.clip_i);
  EXPECT_DOUBLE_EQ(summary["CLIP-T"].get<double>(), first.clip_t);
  EXPECT_EQ(summary["images"], 8);
  EXPECT_EQ(summary["per_subject"]["cat"]["images"], 4);

  // One image by hand, with the models the files were saved from.
  {
    torch::NoGradGuard no_grad;
    const auto image = io::read_image((out / "cat" / "01_1.png").string());
    const auto reference = io::read_image((*root_ / "data" / "cat" / "00.png").string());
    const auto clip_image =
        (*clip_)->get_image_features(eval::clip_processor_pixel_values(image).unsqueeze(0));
    const auto clip_ref =
        (*clip_)->get_image_features(eval::clip_processor_pixel_values(reference).unsqueeze(0));
    const auto tokenizer = kosmosg::text::CLIPTokenizer::from_folder((*root_ / "clip").string());
    const std::string prompt = "a cat wearing a santa hat";
    const auto ids =
        torch::tensor(tokenizer.encode(prompt, tokenizer.bpe_tokens(prompt).size() + 2))
            .unsqueeze(0);
    const auto clip_text = (*clip_)->get_text_features(ids, torch::ones_like(ids));
    // Padding to 77 with the attention mask (CLIPProcessor's padding in a batch) changes nothing.
    const auto padded = torch::tensor(tokenizer.encode(prompt, 77)).unsqueeze(0);
    const auto mask = (torch::arange(77) < ids.size(1)).to(torch::kLong).unsqueeze(0);
    EXPECT_LT((((*clip_)->get_text_features(padded, mask) - clip_text).abs().max()).item<double>(),
              1e-5);
    const auto dino_image = (*dino_)->forward(io::dino_pixel_values(image).unsqueeze(0));
    const auto dino_ref = (*dino_)->forward(io::dino_pixel_values(reference).unsqueeze(0));
    const auto& scored = first.images[3];
    ASSERT_EQ(scored.file, "cat/01_1.png");
    EXPECT_NEAR(scored.scores.clip_t, eval::clip_score(clip_image, clip_text).item<double>(), 1e-4);
    EXPECT_NEAR(scored.scores.clip_i, eval::clip_score(clip_image, clip_ref).item<double>(), 1e-4);
    EXPECT_NEAR(scored.scores.dino, eval::dino_score(dino_image, dino_ref).item<double>(), 1e-4);
  }

  // A rerun generates nothing and scores the same.
  calls_ = 0;
  const auto second = eval::run_dreambench(o, fake_generator());
  EXPECT_EQ(calls_, 0);
  EXPECT_EQ(second.generated, 0);
  EXPECT_EQ(second.reused, 8);
  EXPECT_EQ(all_scores(second), all_scores(first));
  EXPECT_EQ(read_text(out / "summary.json"), summary.dump(1) + "\n");

  // A deleted image: only its batch is generated again and only that file is written.
  const auto sibling_time = fs::last_write_time(out / "teapot" / "00_0.png");
  fs::remove(out / "teapot" / "00_1.png");
  calls_ = 0;
  const auto third = eval::run_dreambench(o, fake_generator());
  EXPECT_EQ(calls_, 1);
  EXPECT_EQ(third.generated, 1);
  EXPECT_EQ(fs::last_write_time(out / "teapot" / "00_0.png"), sibling_time);
  EXPECT_EQ(all_scores(third), all_scores(first));

  // A truncated image is regenerated too.
  const auto truncated = out / "cat" / "00_1.png";
  fs::resize_file(truncated, fs::file_size(truncated) / 2);
  calls_ = 0;
  const auto fourth = eval::run_dreambench(o, fake_generator());
  EXPECT_EQ(calls_, 1);
  EXPECT_EQ(fourth.generated, 1);
  EXPECT_EQ(all_scores(fourth), all_scores(first));

  // Images from other settings are never mixed in.
  auto other_seed = o;
  other_seed.seed = 1;
  calls_ = 0;
  const auto error = error_of([&] { eval::run_dreambench(other_seed, fake_generator()); });
  EXPECT_NE(error.find("seed '0', this run expects '1'"), std::string::npos) << error;
  EXPECT_EQ(calls_, 0);
}

TEST_F(DreamBench, SubjectFilterAndPromptLimit) {
  auto o = options("out_subset");
  o.subjects = {"teapot"};
  o.max_prompts = 1;
  o.images_per_prompt = 3;
  const auto r = eval::run_dreambench(o, fake_generator());
  EXPECT_EQ(calls_, 1);
  ASSERT_EQ(r.images.size(), 3u);
  EXPECT_EQ(r.images[2].file, "teapot/00_2.png");
  EXPECT_EQ(r.images[2].metric_prompt, "a teapot in the snow");
  o.subjects = {"dragon"};
  EXPECT_NE(
      error_of([&] { eval::run_dreambench(o, fake_generator()); }).find("no subject 'dragon'"),
      std::string::npos);
}

TEST_F(DreamBench, MissingDataIsAnErrorBeforeGenerating) {
  const auto check = [&](eval::DreamBenchOptions o, const std::string& expected) {
    calls_ = 0;
    const auto error = error_of([&] { eval::run_dreambench(o, fake_generator()); });
    EXPECT_NE(error.find(expected), std::string::npos) << error;
    EXPECT_EQ(calls_, 0);
    EXPECT_FALSE(fs::exists(o.output_dir));
  };
  auto o = options("out_missing");
  o.data_dir = (*root_ / "nowhere").string();
  check(o, "data folder '" + o.data_dir + "' does not exist");

  const auto data = *root_ / "data_partial";
  fs::create_directories(data / "cat");
  o.data_dir = data.string();
  check(o, "reference image " + (data / "cat" / "00.png").string() +
               " of subject 'cat' does not exist");
  fs::copy_file(*root_ / "data" / "cat" / "00.png", data / "cat" / "00.png");
  check(o, "subject folder " + (data / "teapot").string() + " does not exist");
  fs::create_directories(data / "teapot");
  std::ofstream(data / "teapot" / "01.jpg") << "not a jpeg";
  check(o, (data / "teapot" / "01.jpg").string());

  o = options("out_missing");
  o.dino_weights = (*root_ / "no_dino.safetensors").string();
  check(o, "DINO weights file '" + o.dino_weights + "' does not exist");
  o = options("out_missing");
  o.clip_dir = (*root_ / "data").string();
  check(o, "has no config.json");
  o = options("out_missing");
  o.dino_config = "";  // ViT-S/16 sizes do not fit the tiny weights
  check(o,
        "dino.safetensors holds a DINO ViT with embed_dim 16, but the config (the ViT-S/16 "
        "default) says 384");
}
