// The U-Net techniques from the command line (LoRA, image-to-image, ControlNet), for a plain
// SD1.5 folder and a converted Kosmos-G model alike.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>

#include "kosmosg/io/control_image.h"
#include "kosmosg/io/image.h"
#include "support.h"

namespace {

namespace fs = std::filesystem;
using kosmosg::test::CliResult;
using kosmosg::test::run_cli;
using kosmosg::test::shared_dir;

fs::path fixtures() { return fs::path(shared_dir()) / "fixtures"; }

class CliTechniques : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { KOSMOSG_REQUIRE_SHARED_DATA(); }
  static void SetUpTestSuite() {
    KOSMOSG_REQUIRE_SHARED_DATA();
    work_ = fs::temp_directory_path() / ("kosmosg_cli_tech_" + std::to_string(::getpid()));
    fs::remove_all(work_);
    fs::create_directories(work_);
    const auto kg = fixtures() / "kosmosg-official-tiny";
    convert_ = run_cli("convert " + (kg / "checkpoint_tiny.pt").string() + " " + (work_ / "kosmosg").string() +
                       " --sizes " + (kg / "sizes.json").string());
    kosmosg::test::write_golden_lora("lora_kohya_unet_sd15_tiny", lora());
    kosmosg::test::write_tiny_controlnet(controlnet());
    kosmosg::test::write_tiny_controlnet((work_ / "seeing_controlnet").string(), 3.0);
  }
  static void TearDownTestSuite() { fs::remove_all(work_); }

  static std::string lora() { return (work_ / "kohya.safetensors").string(); }
  static std::string controlnet() { return (work_ / "controlnet").string(); }
  static std::string control(const std::string& extra = "") {
    return "--controlnet " + controlnet() + " --control-image " + picture() + " " + extra;
  }
  static std::string picture() { return (fixtures() / "kosmosg-official-tiny" / "image_1_0.png").string(); }
  bool kosmosg() const { return GetParam() == "kosmosg"; }
  std::string model() const {
    return kosmosg() ? (work_ / "kosmosg").string() : (fixtures() / "tiny-sd15").string();
  }
  // Generates into work/<name>.png and returns the image (undefined on failure, after a test
  // failure naming the output).
  at::Tensor generate(const std::string& name, const std::string& extra) {
    EXPECT_EQ(convert_.status, 0) << convert_.output;
    const auto out = (work_ / (GetParam() + "_" + name + ".png")).string();
    const std::string prompt = kosmosg() ? "'<i> on the beach' --image " + picture() : "'a cat on the beach'";
    const auto r = run_cli("generate --model " + model() + " --prompt " + prompt +
                           " --steps 3 --seed 5 --size 64x64 --quiet --out " + out + " " + extra);
    EXPECT_EQ(r.status, 0) << r.output;
    if (r.status != 0) return {};
    return kosmosg::io::read_image(out);
  }
  CliResult fails(const std::string& extra, const std::string& needle) {
    const auto out = work_ / (GetParam() + "_failed.png");
    const auto r = run_cli("generate --model " + model() + " --prompt 'a cat' --quiet --out " +
                           out.string() + " " + extra);
    EXPECT_NE(r.status, 0) << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.output;
    EXPECT_FALSE(fs::exists(out));
    return r;
  }
  static double max_difference(const at::Tensor& a, const at::Tensor& b) {
    return (a.to(at::kInt) - b.to(at::kInt)).abs().max().item<double>();
  }

  static fs::path work_;
  static CliResult convert_;
};

fs::path CliTechniques::work_;
CliResult CliTechniques::convert_;

TEST_P(CliTechniques, LoraScalesMergesAndComposes) {
  const auto base = generate("base", "");
  const auto zero = generate("lora0", "--lora " + lora() + ":0");
  const auto full = generate("lora1", "--lora " + lora());
  const auto merged = generate("lora1m", "--lora " + lora() + ":1 --lora-merge");
  const auto twice = generate("lora_twice", "--lora " + lora() + ":0.5 --lora " + lora() + ":0.5");
  ASSERT_TRUE(base.defined() && zero.defined() && full.defined() && merged.defined() && twice.defined());
  EXPECT_TRUE(torch::equal(zero, base)) << "a LoRA at scale 0 must equal no LoRA";
  EXPECT_GT(max_difference(full, base), 8);
  EXPECT_LE(max_difference(merged, full), 1) << "merged and unmerged disagree";
  EXPECT_LE(max_difference(twice, full), 1) << "two halves must add up to one";
  EXPECT_TRUE(torch::equal(generate("lora1_again", "--lora " + lora()), full)) << "not reproducible";
}

TEST_P(CliTechniques, ImageToImageUsesThePictureAndComposesWithLora) {
  const auto base = generate("base", "");
  const auto i2i = generate("i2i", "--init-image " + picture() + " --strength 0.7");
  const auto i2i_one = generate("i2i_one", "--init-image " + picture() + " --strength 1");
  const auto i2i_lora = generate("i2i_lora", "--init-image " + picture() + " --strength 0.7 --lora " + lora());
  ASSERT_TRUE(base.defined() && i2i.defined() && i2i_one.defined() && i2i_lora.defined());
  EXPECT_GT(max_difference(i2i, base), 8);
  EXPECT_TRUE(torch::equal(i2i_one, base)) << "strength 1 must be text-to-image";
  EXPECT_GT(max_difference(i2i_lora, i2i), 8);
  EXPECT_TRUE(torch::equal(generate("i2i_again", "--init-image " + picture() + " --strength 0.7"), i2i));
}

TEST_P(CliTechniques, ImageToImageTakesThePictureSizeByDefault) {
  const auto out = work_ / (GetParam() + "_native.png");
  const std::string prompt = kosmosg() ? "'<i>' --image " + picture() : "'a cat'";
  const auto r = run_cli("generate --model " + model() + " --prompt " + prompt + " --steps 2 --quiet --init-image " +
                         picture() + " --out " + out.string());
  ASSERT_EQ(r.status, 0) << r.output;
  const auto source = kosmosg::io::read_image(picture());
  const auto made = kosmosg::io::read_image(out.string());
  EXPECT_EQ(made.size(0), source.size(0) / 8 * 8);
  EXPECT_EQ(made.size(1), source.size(1) / 8 * 8);
}

TEST_P(CliTechniques, BadInputsAreClearErrors) {
  fails("--lora " + (work_ / "nope.safetensors").string(), "nope.safetensors");
  fails("--lora-merge", "--lora");
  fails("--strength 0.5", "--init-image");
  fails("--init-image " + picture() + " --strength 1.5", "--strength 1.5");
  fails("--init-image " + (work_ / "nope.png").string(), "nope.png");
  fails("--init-image " + picture() + " --strength 0.2 --steps 2", "leaves no step");
  // A LoRA for another architecture (wider layers) names the file and a layer.
  const auto wide = (work_ / "wide.safetensors").string();
  kosmosg::io::save_safetensors(
      wide, {{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", torch::zeros({4, 320, 1, 1})},
             {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", torch::zeros({320, 4, 1, 1})}});
  fails("--lora " + wide, "down_blocks.0.attentions.0.proj_in");
  // A model checkpoint is not a LoRA.
  fails("--lora " + (fixtures() / "tiny-sd15" / "unet" / "diffusion_pytorch_model.safetensors").string(),
        "not LoRA weights");
}

TEST_P(CliTechniques, ControlNetScalesWindowsPreprocessesAndAddsUp) {
  const auto base = generate("base", "");
  const auto zero = generate("cn0", control("--control-scale 0"));
  const auto full = generate("cn1", control());
  // The golden ControlNet barely looks at its image; this copy does.
  const std::string seeing = "--controlnet " + (work_ / "seeing_controlnet").string() + " --control-image " + picture();
  const auto plain_map = generate("cn_seeing", seeing);
  const auto canny = generate("cn_canny", seeing + " --control-preprocess canny:50:100");
  const auto early = generate("cn_early", control("--control-end 0.5"));
  const auto halves = generate("cn_halves", control() + control() + "--control-scale 0.5");
  ASSERT_TRUE(base.defined() && zero.defined() && full.defined() && plain_map.defined() && canny.defined() &&
              early.defined() && halves.defined());
  EXPECT_TRUE(torch::equal(zero, base)) << "a ControlNet at scale 0 must equal none";
  EXPECT_GT(max_difference(full, base), 8);
  EXPECT_GT(max_difference(canny, plain_map), 8) << "the preprocessor does not reach the ControlNet";
  EXPECT_GT(max_difference(early, full), 0) << "the guidance window has no effect";
  EXPECT_GT(max_difference(early, base), 0);
  EXPECT_LE(max_difference(halves, full), 1) << "two ControlNets at 0.5 must add up to one at 1";
  EXPECT_TRUE(torch::equal(generate("cn1_again", control()), full)) << "not reproducible";

  // --save-control-map writes the preprocessed map, at the output size.
  generate("cn_map", control("--control-preprocess canny --save-control-map"));
  const auto map = kosmosg::io::read_image((work_ / (GetParam() + "_cn_map_control0.png")).string());
  EXPECT_EQ(map.size(0), 64);
  EXPECT_EQ(map.size(1), 64);
  EXPECT_TRUE(torch::equal(map, kosmosg::io::canny_edges(kosmosg::io::resize(kosmosg::io::read_image(picture()), 64, 64,
                                                                             kosmosg::io::Resample::Lanczos))));
}

TEST_P(CliTechniques, EverythingAtOnce) {
  const std::string i2i_lora = "--init-image " + picture() + " --strength 0.7 --lora " + lora();
  const auto without = generate("all_but_cn", i2i_lora);
  const auto all = generate("all", i2i_lora + " " + control("--control-preprocess scribble"));
  ASSERT_TRUE(without.defined() && all.defined());
  EXPECT_GT(max_difference(all, without), 8);
  EXPECT_TRUE(torch::equal(generate("all_again", i2i_lora + " " + control("--control-preprocess scribble")), all));
}

TEST_P(CliTechniques, ControlNetErrors) {
  const auto unet = (fixtures() / "tiny-sd15" / "unet").string();
  fails("--controlnet " + unet + " --control-image " + picture(), "not a ControlNetModel");
  fails("--controlnet " + controlnet(), "one control image per ControlNet");
  fails(control("--control-preprocess depth"), "unknown preprocessor 'depth'");
  fails(control("--control-end 1.5"), "0 <= start < end <= 1");
  fails(control() + control() + control() + "--control-scale 1 --control-scale 2", "once per ControlNet");
  fails("--controlnet " + controlnet() + " --control-image " + (work_ / "nope.png").string(), "nope.png");
}

INSTANTIATE_TEST_SUITE_P(Models, CliTechniques, ::testing::Values("sd15", "kosmosg"),
                         [](const auto& info) { return info.param; });

}  // namespace
