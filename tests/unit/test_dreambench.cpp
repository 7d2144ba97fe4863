#include <gtest/gtest.h>

#include "support.h"
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "kosmosg/eval/dreambench.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/dino.h"

namespace {

using kosmosg::test::run_cli;

namespace fs = std::filesystem;

using kosmosg::test::shared_dir;

using Result = kosmosg::test::CliResult;

// A made-up benchmark: two subjects, two prompts each, tiny random CLIP and DINO models, and the
// official-format tiny Kosmos-G checkpoint as the generator.
class DreamBenchCli : public ::testing::Test {
 protected:
  void SetUp() override {
    KOSMOSG_REQUIRE_SHARED_DATA();
    work = fs::temp_directory_path() / ("kosmosg_dreambench_" + std::to_string(::getpid()));
    fs::remove_all(work);
    fs::create_directories(work);
    const fs::path official = fs::path(shared_dir()) / "fixtures" / "kosmosg-official-tiny";
    for (const char* subject : {"dog", "can"}) {
      fs::create_directories(work / "data" / subject);
      fs::copy_file(official / "image_0_0.png", work / "data" / subject / "ref.png");
    }
    kosmosg::test::write_text(work / "spec.json", R"({
      "object_subjects": {"can": "can"}, "live_subjects": {"dog": "dog"},
      "reference_image": {"can": "ref.png", "dog": "ref.png"},
      "object_metric_prompts": ["a {} in the jungle", "a red {}"],
      "live_metric_prompts": ["a {} in the snow", "a {} on the beach"],
      "object_input_prompts": ["{} in the jungle", "{}, red"],
      "live_input_prompts": ["{} in the snow", "{} on the beach"]})");

    torch::manual_seed(0);
    const auto clip_json = kosmosg::io::parse_json(R"({"projection_dim": 16,
      "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 2},
      "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "image_size": 224, "patch_size": 32}})", "tiny clip");
    kosmosg::models::CLIPModel clip(kosmosg::models::CLIPConfig::from_json(clip_json));
    fs::create_directories(work / "clip");
    kosmosg::test::write_text(work / "clip" / "config.json", clip_json.dump());
    kosmosg::io::save_safetensors((work / "clip" / "model.safetensors").string(), kosmosg::io::state_dict(*clip));
    for (const char* file : {"vocab.json", "merges.txt"})
      fs::copy_file(fs::path(shared_dir()) / "golden" / "clip" / "tokenizer" / file, work / "clip" / file);

    const auto dino_json = kosmosg::io::parse_json(R"({"embed_dim": 32, "depth": 1, "num_heads": 2})", "tiny dino");
    kosmosg::test::write_text(work / "dino.json", dino_json.dump());
    kosmosg::models::DinoViT dino(kosmosg::models::DinoViTConfig::from_json(dino_json));
    kosmosg::io::save_safetensors((work / "dino.safetensors").string(), kosmosg::io::state_dict(*dino));

    const auto converted = run_cli("convert " + (official / "checkpoint_tiny.pt").string() + " " + (work / "model").string() +
                               " --sizes " + (official / "sizes.json").string());
    ASSERT_EQ(converted.status, 0) << converted.output;
  }
  void TearDown() override { fs::remove_all(work); }

  std::string eval_command() const {
    return "eval dreambench --model " + (work / "model").string() + " --data " + (work / "data").string() +
           " --clip " + (work / "clip").string() + " --dino " + (work / "dino.safetensors").string() +
           " --dino-config " + (work / "dino.json").string() + " --spec " + (work / "spec.json").string() +
           " --out " + (work / "out").string() + " --images-per-prompt 2 --steps 2 --size 64 --quiet";
  }

  fs::path work;
};

}  // namespace

TEST_F(DreamBenchCli, GeneratesScoresAndResumes) {
  auto first = run_cli(eval_command());
  ASSERT_EQ(first.status, 0) << first.output;
  EXPECT_NE(first.output.find("8 generated"), std::string::npos) << first.output;
  ASSERT_TRUE(fs::exists(work / "out" / "summary.json"));
  const auto summary = kosmosg::io::read_json((work / "out" / "summary.json").string());
  size_t lines = 0;
  std::ifstream scores(work / "out" / "scores.jsonl");
  for (std::string line; std::getline(scores, line);) ++lines;
  EXPECT_EQ(lines, 8u);

  auto again = run_cli(eval_command());
  ASSERT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("0 generated, 8 reused"), std::string::npos) << again.output;
  EXPECT_EQ(kosmosg::io::read_json((work / "out" / "summary.json").string()), summary);
}

TEST_F(DreamBenchCli, MissingReferenceImageFailsBeforeGenerating) {
  fs::remove(work / "data" / "can" / "ref.png");
  auto r = run_cli(eval_command());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("ref.png"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(work / "out" / "dog"));
}
