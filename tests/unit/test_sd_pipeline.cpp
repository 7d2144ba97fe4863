#include <gtest/gtest.h>

#include "support.h"
#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <unistd.h>

#include "kosmosg/io/config.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/pipeline/pipeline.h"
#include "kosmosg/pipeline/stable_diffusion.h"

namespace {

using kosmosg::test::relative_l2;

namespace fs = std::filesystem;

using kosmosg::test::shared_dir;

}  // namespace

// The diffusers folder generates exactly what diffusers computes from it.
TEST(StableDiffusionPipeline, TinyFixtureMatchesDiffusers) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const std::string dir = shared_dir() + "/fixtures/tiny-sd15";
  auto expected = kosmosg::io::SafeTensors::open(dir + "/expected.safetensors");
  auto pipe = kosmosg::pipeline::Pipeline::from_folder(dir);
  auto encoder = kosmosg::pipeline::CLIPTextConditionEncoder::from_folder(dir);

  const auto& meta = expected.metadata();
  auto prompt = encoder->encode_prompt(meta.at("prompt"));
  auto negative = encoder->encode_prompt(meta.at("negative_prompt"));
  EXPECT_LT(relative_l2(prompt, expected.get("output.prompt_hidden_states")), 1e-4);
  EXPECT_LT(relative_l2(negative, expected.get("output.negative_hidden_states")), 1e-4);

  kosmosg::pipeline::GenerateOptions options;
  options.prompt = meta.at("prompt");
  options.negative = meta.at("negative_prompt");
  options.sampling.sampler = "dpmpp-2m";
  options.sampling.steps = std::stoll(meta.at("num_inference_steps"));
  options.sampling.guidance = std::stod(meta.at("guidance_scale"));
  options.width = std::stoll(meta.at("width"));
  options.height = std::stoll(meta.at("height"));
  options.initial_latents = expected.get("input.initial_latents");
  std::vector<int64_t> timesteps;
  auto [latents, image] = pipe.generate(options, [&](const kosmosg::pipeline::StepInfo& s) {
    timesteps.push_back(static_cast<int64_t>(s.timestep));
  });
  EXPECT_TRUE(torch::equal(at::tensor(timesteps), expected.get("output.timesteps")));
  EXPECT_LT(relative_l2(latents, expected.get("output.final_latents")), 1e-3);
  EXPECT_LT(relative_l2(image, expected.get("output.image")), 1e-3);
  EXPECT_LT(relative_l2((image / 2 + 0.5).clamp(0, 1), expected.get("output.image_01")), 1e-3);
}

// A text encoder with fewer positions than SD's 77 (a small model of one's own) gets as many
// tokens as it has positions. Its attention is causal, so a short prompt's states are the 77-token
// encoder's first rows.
TEST(StableDiffusionPipeline, PromptFillsTheTextEncodersPositions) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const fs::path fixture = shared_dir() + "/fixtures/tiny-sd15";
  const fs::path dir = fs::temp_directory_path() / ("kosmosg_short_encoder_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "text_encoder");
  fs::copy(fixture / "tokenizer", dir / "tokenizer", fs::copy_options::recursive);
  auto config = kosmosg::io::read_json((fixture / "text_encoder" / "config.json").string());
  const int64_t positions = 16;
  config["max_position_embeddings"] = positions;
  kosmosg::io::write_text_atomically((dir / "text_encoder" / "config.json").string(), config.dump());
  auto weights = kosmosg::io::SafeTensors::open((fixture / "text_encoder" / "model.safetensors").string()).tensors();
  auto& embedding = weights.at("text_model.embeddings.position_embedding.weight");  // positions x width
  auto& ids = weights.at("text_model.embeddings.position_ids");                     // 1 x positions
  embedding = embedding.slice(0, 0, positions);
  ids = ids.slice(1, 0, positions);
  kosmosg::io::save_safetensors((dir / "text_encoder" / "model.safetensors").string(), weights);

  auto full = kosmosg::pipeline::CLIPTextConditionEncoder::from_folder(fixture.string());
  auto short_encoder = kosmosg::pipeline::CLIPTextConditionEncoder::from_folder(dir.string());
  const at::Tensor expected = full->encode_prompt("a red cube");
  const at::Tensor states = short_encoder->encode_prompt("a red cube");
  ASSERT_EQ(states.sizes(), (std::vector<int64_t>{1, positions, expected.size(2)}));
  EXPECT_LT(relative_l2(states, expected.slice(1, 0, positions)), 1e-5);
  fs::remove_all(dir);
}

TEST(StableDiffusionPipeline, SameSeedSameImage) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto pipe = kosmosg::pipeline::Pipeline::from_folder(shared_dir() + "/fixtures/tiny-sd15");
  kosmosg::pipeline::GenerateOptions options;
  options.prompt = "a red cube";
  options.sampling.steps = 3;
  options.width = options.height = 64;
  options.seed = 42;
  auto a = pipe.generate(options).second;
  auto b = pipe.generate(options).second;
  options.seed = 43;
  auto c = pipe.generate(options).second;
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
}

// DPM++ 2M SDE through the whole pipeline: its per-step noise comes from the seed's generator,
// so a seed reproduces the image and another seed changes it. (The fixture's random UNet is no
// denoiser, so "sensible" can only mean a finite, non-flat image of the right size.)
TEST(StableDiffusionPipeline, SdeSamplerRunsReproducibly) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto pipe = kosmosg::pipeline::Pipeline::from_folder(shared_dir() + "/fixtures/tiny-sd15");
  kosmosg::pipeline::GenerateOptions options;
  options.prompt = "a red cube";
  options.sampling.sampler = "dpmpp-2m-sde-karras";
  options.sampling.steps = 8;
  options.width = options.height = 64;
  options.seed = 42;
  auto [latents, image] = pipe.generate(options);
  EXPECT_TRUE(torch::isfinite(latents).all().item<bool>());
  EXPECT_EQ(image.sizes(), (std::vector<int64_t>{1, 3, 64, 64}));
  EXPECT_GT(image.std().item<double>(), 1e-3);
  EXPECT_TRUE(torch::equal(pipe.generate(options).second, image));
  options.seed = 43;
  EXPECT_FALSE(torch::equal(pipe.generate(options).second, image));
  options.seed = 42;
  options.sampling.sampler = "dpmpp-2m-karras";
  EXPECT_FALSE(torch::equal(pipe.generate(options).second, image));
}

// A batch makes each image as generate() does from the same options (up to rounding), and refuses
// options it cannot share rather than making something else.
TEST(StableDiffusionPipeline, BatchMakesEachImageAsAlone) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto pipe = kosmosg::pipeline::Pipeline::from_folder(shared_dir() + "/fixtures/tiny-sd15");
  std::vector<kosmosg::pipeline::GenerateOptions> batch(3);
  const char* prompts[] = {"a red cube", "a blue sphere on a table", "a red cube"};
  for (size_t k = 0; k < batch.size(); ++k) {
    batch[k].prompt = prompts[k];
    batch[k].sampling.steps = 4;
    batch[k].width = batch[k].height = 64;
    batch[k].seed = 10 + k;
  }
  const at::Tensor images = pipe.generate_batch(batch);
  ASSERT_EQ(images.sizes(), (std::vector<int64_t>{3, 3, 64, 64}));
  for (size_t k = 0; k < batch.size(); ++k)
    EXPECT_LT(relative_l2(images[k], pipe.generate(batch[k]).second[0]), 1e-4) << "image " << k;
  EXPECT_GT(relative_l2(images[0], images[2]), 1e-3);  // same prompt, another seed

  auto mixed = batch;
  mixed[1].sampling.steps = 5;
  EXPECT_THROW(pipe.generate_batch(mixed), kosmosg::Error);
  // A sampler that draws noise at every step draws each image's from its own seed.
  auto ancestral = batch;
  for (auto& o : ancestral) o.sampling.sampler = "euler-a";
  const at::Tensor drawn = pipe.generate_batch(ancestral);
  for (size_t k = 0; k < ancestral.size(); ++k)
    EXPECT_LT(relative_l2(drawn[k], pipe.generate(ancestral[k]).second[0]), 1e-4) << "euler-a image " << k;
  EXPECT_GT(relative_l2(drawn[0], images[0]), 1e-3);
  EXPECT_THROW(pipe.generate_batch({}), kosmosg::Error);
}
