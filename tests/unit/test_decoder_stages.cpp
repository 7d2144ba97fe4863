// `kosmosg train --stage vae|t2i` end to end on a small shapes world and the configs/shapes model
// started from its configs alone: each stage learns, resume is exact, the output generates, and
// data or folders that cannot work are refused with a clear message.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "kosmosg/io/builtin_configs.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;
using kosmosg::test::run_cli;
using kosmosg::test::shared_dir;
using kosmosg::test::read_metrics;


double mean_of(const std::vector<kosmosg::io::Json>& m, const char* key, size_t begin, size_t end) {
  double s = 0;
  for (size_t i = begin; i < end; ++i) s += m[i].at(key).get<double>();
  return s / static_cast<double>(end - begin);
}

class DecoderStages : public ::testing::Test {
 protected:
  void SetUp() override { KOSMOSG_REQUIRE_SHARED_DATA(); }
  static void SetUpTestSuite() {
    KOSMOSG_REQUIRE_SHARED_DATA();
    work_ = fs::temp_directory_path() / ("kosmosg_decoder_stages_" + std::to_string(::getpid()));
    fs::remove_all(work_);
    world_ = run_cli("data shapes --out " + (work_ / "world").string() + " --count 12 --test-count 2 --quiet");
    // The shapes world's decoder as configs only (compiled in from configs/shapes), with the CLIP
    // BPE tokenizer of an SD1.5 folder.
    const fs::path model = configs_only();
    for (const char* file : {"model_index.json", "vae/config.json", "unet/config.json", "text_encoder/config.json",
                             "scheduler/scheduler_config.json"}) {
      fs::create_directories((model / file).parent_path());
      std::ofstream(model / file) << kosmosg::io::builtin_config(std::string("shapes/") + file).dump(2);
    }
    fs::copy(fs::path(shared_dir()) / "fixtures" / "tiny-sd15" / "tokenizer", model / "tokenizer",
             fs::copy_options::recursive);
  }
  static void TearDownTestSuite() { fs::remove_all(work_); }

  static fs::path configs_only() { return work_ / "configs_only"; }
  static std::string data() { return (work_ / "world" / "text_to_image.jsonl").string(); }
  static std::string train(const std::string& stage, const fs::path& model, const fs::path& out,
                           const std::string& extra) {
    return "train --stage " + stage + " --model " + model.string() + " --data " + data() + " --out " + out.string() +
           " --threads 1 --quiet " + extra;
  }
  // The vae stage's output after `steps` updates from the configs alone (trained once, shared).
  static const fs::path& trained_vae() {
    static const fs::path out = [] {
      const fs::path dir = work_ / "vae";
      auto r = run_cli(train("vae", configs_only(), dir, "--steps 40 --batch-size 2 --lr 2e-3 --warmup 2 --seed 1"));
      EXPECT_EQ(r.status, 0) << r.output;
      EXPECT_NE(r.output.find("starts from a seeded draw"), std::string::npos) << r.output;
      return dir;
    }();
    return out;
  }

  static fs::path work_;
  static kosmosg::test::CliResult world_;
};

fs::path DecoderStages::work_;
kosmosg::test::CliResult DecoderStages::world_;

TEST_F(DecoderStages, VaeLearnsFromConfigsAlone) {
  ASSERT_EQ(world_.status, 0) << world_.output;
  const fs::path out = trained_vae();
  const auto m = read_metrics(out);
  ASSERT_EQ(m.size(), 40u);
  EXPECT_LT(mean_of(m, "rec_loss", 30, 40), 0.75 * mean_of(m, "rec_loss", 0, 10));
  EXPECT_GT(m.back().at("kl").get<double>(), 0.0);
  // The output is the starting folder with the VAE's weights written in.
  EXPECT_TRUE(fs::exists(out / "vae" / "config.json"));
  const auto vae = kosmosg::io::SafeTensors::open((out / "vae" / "diffusion_pytorch_model.safetensors").string());
  EXPECT_TRUE(vae.contains("encoder.conv_in.weight"));
  EXPECT_TRUE(vae.contains("decoder.conv_out.weight"));
  EXPECT_FALSE(fs::exists(out / "kosmosg"));
  EXPECT_FALSE(fs::exists(out / "unet" / "diffusion_pytorch_model.safetensors"));
}

TEST_F(DecoderStages, T2ILearnsAndItsOutputGenerates) {
  ASSERT_EQ(world_.status, 0) << world_.output;
  const fs::path out = work_ / "t2i";
  // The UNet and the text encoder have configs only in the vae stage's output: both are drawn.
  auto r = run_cli(train("t2i", trained_vae(), out, "--steps 40 --batch-size 2 --lr 2e-3 --warmup 2 --seed 2"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto m = read_metrics(out);
  ASSERT_EQ(m.size(), 40u);
  EXPECT_LT(mean_of(m, "loss", 30, 40), 0.8 * mean_of(m, "loss", 0, 10));
  for (const char* file : {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                           "vae/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json"})
    EXPECT_TRUE(fs::exists(out / file)) << file;
  const fs::path image = work_ / "generated.png";
  r = run_cli("generate --model " + out.string() +
              " --prompt 'a red circle on a blue background' --steps 4 --seed 3 --threads 1 --out " + image.string());
  ASSERT_EQ(r.status, 0) << r.output;
  const auto pixels = kosmosg::io::read_image(image.string());
  EXPECT_EQ(pixels.size(0), 64);
  EXPECT_EQ(pixels.size(1), 64);
}

// The Kosmos-G stages on the trained decoder, with the shapes config (configs/shapes/kosmosg) and
// no weights: lm starts from a seeded draw, then align and instruct, and export releases the result
// in half precision, which generates.
TEST_F(DecoderStages, KosmosGStagesStartFromTheShapesConfigAndExport) {
  ASSERT_EQ(world_.status, 0) << world_.output;
  const fs::path decoder = work_ / "t2i_for_kosmosg", start = work_ / "kosmosg_start";
  auto r = run_cli(train("t2i", trained_vae(), decoder, "--steps 2 --batch-size 2 --seed 2"));
  ASSERT_EQ(r.status, 0) << r.output;
  fs::copy(decoder, start, fs::copy_options::recursive);
  fs::remove_all(start / "checkpoints");
  const fs::path configs = fs::path(__FILE__).parent_path().parent_path().parent_path() / "configs" / "shapes" / "kosmosg";
  fs::create_directories(start / "kosmosg");
  for (const char* file : {"config.json", "dict.txt", "sentencepiece.bpe.model"})
    fs::copy_file(configs / file, start / "kosmosg" / file);
  const fs::path world = work_ / "world";
  auto stage = [&](const std::string& name, const fs::path& model, const std::vector<std::string>& data) {
    std::string args = "train --stage " + name + " --model " + model.string() + " --out " + (work_ / name).string() +
                       " --steps 3 --batch-size 2 --warmup 1 --lr 1e-3 --threads 1 --quiet";
    for (const auto& d : data) args += " --data " + (world / d).string();
    return run_cli(args);
  };
  r = stage("lm", start, {"captions.jsonl", "interleaved.jsonl", "entities.jsonl"});
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("start from a seeded draw"), std::string::npos) << r.output;
  r = stage("align", work_ / "lm", {"captions.jsonl"});
  ASSERT_EQ(r.status, 0) << r.output;
  r = stage("instruct", work_ / "align", {"one_entity.jsonl", "edit.jsonl"});
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(read_metrics(work_ / "instruct").size(), 3u);

  const fs::path released = work_ / "released";
  r = run_cli("export " + (work_ / "instruct").string() + " " + released.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_FALSE(fs::exists(released / "checkpoints"));
  EXPECT_FALSE(fs::exists(released / "metrics.jsonl"));
  for (const char* file : {"kosmosg/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                           "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}) {
    const auto half = kosmosg::io::SafeTensors::open((released / file).string());
    const auto full = kosmosg::io::SafeTensors::open((work_ / "instruct" / file).string());
    ASSERT_EQ(half.keys(), full.keys()) << file;
    for (const auto& k : half.keys()) {
      const at::Tensor h = half.get(k), f = full.get(k);
      if (!f.is_floating_point()) {
        EXPECT_TRUE(at::equal(h, f)) << file << " " << k;
        continue;
      }
      EXPECT_EQ(h.scalar_type(), at::kHalf) << file << " " << k;
      EXPECT_TRUE(at::equal(h, f.to(at::kHalf))) << file << " " << k;
    }
  }
  const fs::path image = work_ / "released.png";
  r = run_cli("generate --model " + released.string() + " --prompt '<i> on a yellow background' --image " +
              (world / "entities" / "red_circle.png").string() + " --steps 3 --seed 1 --threads 1 --out " + image.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(kosmosg::io::read_image(image.string()).size(0), 64);
  // An existing output is never overwritten.
  r = run_cli("export " + (work_ / "instruct").string() + " " + released.string());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("already exists"), std::string::npos) << r.output;
}

TEST_F(DecoderStages, ResumeIsExact) {
  ASSERT_EQ(world_.status, 0) << world_.output;
  // The t2i run trains its text encoder too; the vae run fits its scaling_factor.
  const fs::path config = work_ / "t2i_text_encoder.json";
  std::ofstream(config) << R"({"train_text_encoder": true, "fit_scaling_factor": true})";
  for (const std::string stage : {"vae", "t2i"}) {
    const fs::path whole = work_ / ("whole_" + stage), split = work_ / ("split_" + stage);
    const std::string common = "--batch-size 2 --seed 5 --warmup 1 --lr 1e-3 --config " + config.string();
    const fs::path model = stage == "vae" ? configs_only() : trained_vae();
    auto r = run_cli(train(stage, model, whole, "--steps 4 " + common));
    ASSERT_EQ(r.status, 0) << r.output;
    r = run_cli(train(stage, model, split, "--steps 2 " + common));
    ASSERT_EQ(r.status, 0) << r.output;
    r = run_cli(train(stage, model, split, "--steps 4 --resume " + common));
    ASSERT_EQ(r.status, 0) << r.output;
    const auto a = kosmosg::io::SafeTensors::open((whole / "checkpoints" / "step_00000004" / "trainable.safetensors").string());
    const auto b = kosmosg::io::SafeTensors::open((split / "checkpoints" / "step_00000004" / "trainable.safetensors").string());
    ASSERT_EQ(a.keys(), b.keys());
    if (stage == "t2i") EXPECT_TRUE(a.contains("text_encoder.text_model.final_layer_norm.weight"));
    for (const auto& k : a.keys()) EXPECT_TRUE(at::equal(a.get(k), b.get(k))) << stage << " " << k;
    const auto ma = read_metrics(whole), mb = read_metrics(split);
    ASSERT_EQ(mb.size(), 4u);
    for (size_t i = 0; i < 4; ++i) EXPECT_EQ(ma[i].at("loss"), mb[i].at("loss")) << stage << " " << i;
    if (stage == "vae") {
      auto scale = [](const fs::path& dir) {
        return kosmosg::io::read_json((dir / "vae" / "config.json").string()).at("scaling_factor").get<double>();
      };
      EXPECT_EQ(scale(whole), scale(split));
      EXPECT_NE(scale(whole), 0.18215);
      // The output's config only linked to the starting folder's, which keeps its own.
      EXPECT_EQ(scale(configs_only()), 0.18215);
    }
  }
}

// crop_size: the vae stage trains on a random window of each image, drawn from the sample's seed
// (so resume stays exact), and refuses a window the VAE cannot encode.
TEST_F(DecoderStages, VaeTrainsOnCrops) {
  ASSERT_EQ(world_.status, 0) << world_.output;
  const fs::path config = work_ / "vae_crop.json";
  std::ofstream(config) << R"({"crop_size": 32})";
  const std::string common = "--batch-size 2 --seed 6 --warmup 1 --lr 1e-3";
  const fs::path whole = work_ / "crop_whole", split = work_ / "crop_split", uncropped = work_ / "crop_none";
  auto r = run_cli(train("vae", configs_only(), whole, "--steps 3 " + common + " --config " + config.string()));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_cli(train("vae", configs_only(), split, "--steps 1 " + common + " --config " + config.string()));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_cli(train("vae", configs_only(), split, "--steps 3 --resume " + common + " --config " + config.string()));
  ASSERT_EQ(r.status, 0) << r.output;
  r = run_cli(train("vae", configs_only(), uncropped, "--steps 1 " + common));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto cropped = read_metrics(whole), resumed = read_metrics(split), full = read_metrics(uncropped);
  ASSERT_EQ(cropped.size(), 3u);
  ASSERT_EQ(resumed.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(cropped[i].at("loss"), resumed[i].at("loss")) << i;
  // The same draw of the same images, seen whole: another loss.
  EXPECT_NE(cropped[0].at("rec_loss"), full[0].at("rec_loss"));
  for (const char* side : {"30", "128"}) {
    const fs::path bad = work_ / (std::string("crop_") + side + ".json");
    std::ofstream(bad) << "{\"crop_size\": " << side << "}";
    r = run_cli(train("vae", configs_only(), work_ / (std::string("refused_crop_") + side), "--steps 1 --config " + bad.string()));
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.output.find("crop_size is " + std::string(side) + ", expected a multiple of the VAE's downscale 4"),
              std::string::npos)
        << r.output;
  }
}

TEST_F(DecoderStages, RefusesWhatCannotWork) {
  ASSERT_EQ(world_.status, 0) << world_.output;
  // captions.jsonl has text records only: no target image to reconstruct or denoise.
  const std::string captions = (work_ / "world" / "captions.jsonl").string();
  for (const char* stage : {"vae", "t2i"}) {
    auto r = run_cli("train --stage " + std::string(stage) + " --model " + configs_only().string() + " --data " +
                     captions + " --out " + (work_ / ("no_target_" + std::string(stage))).string() +
                     " --steps 1 --quiet --threads 1");
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.output.find("has no 'target' image, which stage " + std::string(stage) + " needs"), std::string::npos)
        << r.output;
  }
  // A folder without the t2i stage's components names each missing file.
  const fs::path partial = work_ / "vae_only";
  fs::create_directories(partial / "vae");
  fs::copy_file(configs_only() / "vae" / "config.json", partial / "vae" / "config.json");
  auto r = run_cli(train("t2i", partial, work_ / "refused_t2i", "--steps 1"));
  EXPECT_NE(r.status, 0);
  for (const char* file : {"unet/config.json", "text_encoder/config.json", "tokenizer/vocab.json"})
    EXPECT_NE(r.output.find(file), std::string::npos) << r.output;
  // A text encoder that does not fit the UNet's cross-attention.
  const fs::path narrow = work_ / "narrow";
  fs::copy(configs_only(), narrow, fs::copy_options::recursive);
  auto text_config = kosmosg::io::read_json((narrow / "text_encoder" / "config.json").string());
  text_config["hidden_size"] = 32;
  std::ofstream(narrow / "text_encoder" / "config.json") << text_config.dump();
  r = run_cli(train("t2i", narrow, work_ / "refused_narrow", "--steps 1"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("cross_attention_dim"), std::string::npos) << r.output;
  // --init-from carries Kosmos-G weights, which the decoder stages do not have.
  r = run_cli(train("vae", configs_only(), work_ / "refused_init", "--steps 1 --init-from " + configs_only().string()));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--init-from"), std::string::npos) << r.output;
  // A negative noise offset, named with its config file.
  const fs::path offset_config = work_ / "negative_offset.json";
  std::ofstream(offset_config) << R"({"noise_offset": -0.1})";
  r = run_cli(train("t2i", configs_only(), work_ / "refused_offset", "--steps 1 --config " + offset_config.string()));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("negative_offset.json"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("noise_offset is -0.1"), std::string::npos) << r.output;
  // A hard-negative weight below 0 and a temperature of 0.
  for (const auto& [text, message] : {std::pair{R"({"negative_weight": -1})", "negative_weight is -1"},
                                      std::pair{R"({"negative_temperature": 0})", "negative_temperature is 0"}}) {
    const fs::path config = work_ / "negatives.json";
    std::ofstream(config) << text;
    r = run_cli(train("t2i", configs_only(), work_ / "refused_negatives", "--steps 1 --config " + config.string()));
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
  }
}

}  // namespace
