// The code of docs/API.md: every ```cpp block of the guide must appear verbatim in this file,
// which compiles and runs them on the tiny fixtures, so the guide stays true.
#include <gtest/gtest.h>

#include "support.h"
#include <torch/torch.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

// [guide:includes]
#include <ATen/CPUGeneratorImpl.h>

#include "kosmosg/io/config.h"
#include "kosmosg/io/control_image.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/controlnet.h"
#include "kosmosg/models/lora.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/pipeline/convert.h"
#include "kosmosg/pipeline/kosmosg.h"
#include "kosmosg/pipeline/pipeline.h"
#include "kosmosg/text/prompt_layout.h"
#include "kosmosg/data/loader.h"
#include "kosmosg/train/trainer.h"
// [guide:end]

namespace {

using kosmosg::test::read_text;

namespace fs = std::filesystem;

using kosmosg::test::shared_dir;

// [guide:build-and-load]
// Any module is built from its upstream config and loaded strictly by upstream names.
kosmosg::models::UNet2DConditionModel load_unet(const std::string& folder) {
  auto config = kosmosg::models::UNet2DConditionConfig::from_json(
      kosmosg::io::read_json(folder + "/config.json"));
  kosmosg::models::UNet2DConditionModel unet(config);
  kosmosg::io::LoadOptions options;
  options.source_name = folder;  // named in errors: missing, unexpected, mis-shaped keys
  kosmosg::io::load_weights(
      *unet, kosmosg::io::read_component_weights(folder, {"diffusion_pytorch_model"}), options);
  unet->eval();
  return unet;
}
// [guide:end]

// [guide:pipeline]
// The whole pipeline from C++: "<i>" takes the next image, as on the command line.
void paint(const std::string& model_dir, const std::string& photo, const std::string& out) {
  auto pipe = kosmosg::pipeline::Pipeline::from_folder(model_dir);
  kosmosg::pipeline::GenerateOptions options;
  options.prompt = "<i> as an oil painting";
  options.images = {kosmosg::io::read_image(photo)};
  options.sampling.steps = 2;
  options.width = options.height = 64;
  options.seed = 7;
  auto [latents, image] = pipe.generate(options);
  kosmosg::io::write_png(out, kosmosg::pipeline::to_uint8_images(image)[0], {{"prompt", options.prompt}});
}
// [guide:end]

// [guide:swap]
// Swapping a component: compose the parts yourself. Here the image features come from the
// model's own tower and connector (put your encoder's [N·Q, C] slot embeddings there instead),
// and any aligner producing [B, Q, W] conditions can replace `model->aligner`.
at::Tensor my_condition(kosmosg::pipeline::KosmosGConditionEncoder& encoder, const std::string& prompt,
                        const at::Tensor& pixel_values, kosmosg::models::AlignerEncoder aligner) {
  torch::NoGradGuard no_grad;
  auto& model = encoder.model();
  const auto layout = kosmosg::text::layout_prompt(encoder.tokenizer(), prompt,
                                                   model->config().connector.latent_query_num);
  const auto batch = kosmosg::text::batch_prompts({layout});
  at::Tensor slots = model->image_embeddings(pixel_values);
  at::Tensor hidden = model->gpt_model->forward(batch.tokens, slots, batch.image_mask, false).hidden;
  return aligner->forward(hidden, batch.tokens.eq(1));
}
// [guide:end]

// [guide:techniques]
// LoRA beside the weights (its strength changes between images), a ControlNet fed a Canny map
// and image-to-image, all through one GenerateOptions; the same works with a Stable Diffusion folder.
std::vector<at::Tensor> restyle(kosmosg::pipeline::Pipeline& pipe, const std::string& lora_file,
                                const std::string& controlnet_dir, const std::string& photo) {
  auto strength = pipe.attach_lora(kosmosg::models::read_lora(lora_file), 0.0);
  const auto picture = kosmosg::io::read_image(photo);
  kosmosg::pipeline::GenerateOptions options;
  options.prompt = "<i> on the beach";
  options.images = {picture};
  options.sampling.steps = 2;
  options.width = options.height = 64;
  options.init_image = picture;
  options.strength = 0.7;
  kosmosg::pipeline::ControlNetGuide guide;
  guide.model = kosmosg::models::load_controlnet(controlnet_dir);
  guide.image = kosmosg::io::canny_edges(kosmosg::io::resize(picture, 64, 64, kosmosg::io::Resample::Lanczos));
  guide.scale = 0.8;
  options.controlnets = {guide};
  std::vector<at::Tensor> images;
  for (double s : {0.0, 1.0}) {
    *strength = s;
    images.push_back(pipe.generate(options).second);
  }
  kosmosg::models::remove_lora(*pipe.decoder().unet());
  return images;
}
// [guide:end]

}  // namespace

// [guide:training]
// One stage trained from C++: the stage's modules under the official names, fairseq's update in
// the Trainer, batches from the data loader. Swap the forward for a loss of your own.
double train_instruct(const std::string& model_dir, const std::string& manifest, int updates) {
  using kosmosg::data::StageKind;
  auto models = kosmosg::train::StageModels::from_folder(model_dir, StageKind::Instruct);
  auto stage = kosmosg::train::make_stage(StageKind::Instruct, models, {});
  kosmosg::train::OptimizationOptions optimization;  // the official Adam, schedule and clip-norm
  optimization.schedule.warmup_updates = 1;
  kosmosg::train::Trainer trainer(*stage, optimization);

  const auto tokenizer = kosmosg::text::KosmosGTokenizer::from_files(
      model_dir + "/kosmosg/sentencepiece.bpe.model", model_dir + "/kosmosg/dict.txt");
  kosmosg::data::LoaderOptions data;
  data.sources = {kosmosg::data::parse_source_spec(manifest)};
  data.sample.stage = StageKind::Instruct;
  data.sample.tokenizer = &tokenizer;
  stage->configure_samples(data.sample);  // MLLM image size and slots, the UNet's target side
  data.batch_size = 2;
  kosmosg::data::Loader loader(data);

  at::Generator generator = at::detail::createCPUGenerator(/*seed=*/0);
  double loss = 0;
  for (int k = 0; k < updates; ++k) {
    const kosmosg::data::Batch batch = loader.next();
    loss = trainer.update({[&] { return stage->forward(batch, generator); }}).loss;
  }
  return loss;
}
// [guide:end]

TEST(ApiGuide, EveryCodeBlockOfTheGuideIsCompiledHere) {
  const fs::path here(__FILE__);
  const std::string guide = read_text(here.parent_path().parent_path().parent_path() / "docs" / "API.md");
  const std::string source = read_text(here);
  ASSERT_FALSE(guide.empty());
  size_t blocks = 0, pos = 0;
  while ((pos = guide.find("```cpp\n", pos)) != std::string::npos) {
    const size_t start = pos + 7, end = guide.find("```", start);
    ASSERT_NE(end, std::string::npos);
    EXPECT_NE(source.find(guide.substr(start, end - start)), std::string::npos)
        << "block " << blocks << " of docs/API.md is not in this test:\n" << guide.substr(start, end - start);
    ++blocks;
    pos = end + 3;
  }
  EXPECT_GE(blocks, 5u);
}

TEST(ApiGuide, ExamplesRun) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const fs::path work = fs::temp_directory_path() / ("kosmosg_guide_" + std::to_string(::getpid()));
  fs::remove_all(work);
  fs::create_directories(work);  // convert, as generate, writes into an existing folder
  const fs::path official = fs::path(shared_dir()) / "fixtures" / "kosmosg-official-tiny";
  auto unet = load_unet(shared_dir() + "/fixtures/tiny-sd15/unet");
  EXPECT_EQ(unet->config().block_out_channels.front(), 16);

  kosmosg::pipeline::ConvertOptions convert;
  convert.checkpoint = (official / "checkpoint_tiny.pt").string();
  convert.out_dir = (work / "model").string();
  convert.sizes_file = (official / "sizes.json").string();
  kosmosg::pipeline::convert_checkpoint(convert);
  paint(convert.out_dir, (official / "image_0_0.png").string(), (work / "painting.png").string());
  EXPECT_TRUE(fs::exists(work / "painting.png"));

  auto encoder = kosmosg::pipeline::KosmosGConditionEncoder::from_folder(convert.out_dir);
  const auto& config = encoder->model()->config();
  auto pixels = kosmosg::io::clip_pixel_values(kosmosg::io::read_image((official / "image_0_0.png").string()),
                                               config.vision.image_size).unsqueeze(0);
  at::Tensor ours = my_condition(*encoder, "<i> in the jungle", pixels, encoder->model()->aligner);
  at::Tensor reference =
      encoder->encode("<i> in the jungle", {kosmosg::io::read_image((official / "image_0_0.png").string())}, "", false)
          .conditional;
  EXPECT_TRUE(torch::allclose(ours, reference, 1e-5, 1e-6));

  auto pipe = kosmosg::pipeline::Pipeline::from_folder(convert.out_dir);

  const auto images = restyle(pipe, kosmosg::test::write_golden_lora("lora_kohya_unet_sd15_tiny", (work / "lora.safetensors").string()),
                              kosmosg::test::write_tiny_controlnet((work / "controlnet").string()),
                              (official / "image_0_0.png").string());
  ASSERT_EQ(images.size(), 2u);
  EXPECT_FALSE(torch::allclose(images[0], images[1]));

  const fs::path examples = fs::path(__FILE__).parent_path().parent_path().parent_path() / "docs" / "examples";
  const double loss = train_instruct(convert.out_dir, (examples / "tiny-data" / "instruct.jsonl").string(), 3);
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_GT(loss, 0);
  fs::remove_all(work);
}
