#include "kosmosg/pipeline/stable_diffusion.h"

#include <filesystem>

#include "kosmosg/error.h"
#include "kosmosg/io/config.h"

namespace kosmosg::pipeline {

namespace fs = std::filesystem;

void check_image_size(int64_t width, int64_t height, int64_t scale) {
  constexpr int64_t kMaxSide = 4096;
  for (auto [name, v] : {std::pair<const char*, int64_t>{"width", width}, {"height", height}}) {
    if (v <= 0 || v % scale != 0)
      fail("size", std::string(name) + " " + std::to_string(v) + " must be a positive multiple of " +
                       std::to_string(scale));
    if (v > kMaxSide)
      fail("size", std::string(name) + " " + std::to_string(v) + " is larger than the " +
                       std::to_string(kMaxSide) + " pixels this tool accepts");
  }
}

StableDiffusionPipeline StableDiffusionPipeline::from_folder(const std::string& dir) {
  if (!fs::is_directory(dir)) fail("model", dir + " is not a folder (expected a diffusers model folder)");
  const fs::path root(dir);
  if (!fs::exists(root / "model_index.json"))
    fail("model", dir + " has no model_index.json (expected a diffusers model folder)");
  for (const char* part : {"unet", "vae", "text_encoder", "tokenizer", "scheduler"})
    if (!fs::is_directory(root / part))
      fail("model", dir + " has no " + part + "/ folder (a Stable Diffusion folder needs unet, vae, "
                          "text_encoder, tokenizer and scheduler)");
  StableDiffusionPipeline p;
  p.decoder_ = std::make_unique<DiffusionDecoder>(DiffusionDecoder::from_folder(dir));
  p.text_encoder_ = models::load_clip_text_model((root / "text_encoder").string());
  p.text_encoder_->eval();
  p.tokenizer_ = std::make_unique<text::CLIPTokenizer>(text::CLIPTokenizer::from_folder((root / "tokenizer").string()));
  return p;
}

void StableDiffusionPipeline::to(const c10::Device& device, c10::ScalarType dtype) {
  decoder_->to(device, dtype);
  text_encoder_->to(device, dtype);
}

at::Tensor StableDiffusionPipeline::encode_prompt(const std::string& text) {
  torch::NoGradGuard no_grad;
  const auto ids = tokenizer_->encode(text);
  const auto param = text_encoder_->parameters().front();
  at::Tensor input = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0).to(param.device());
  return text_encoder_->forward(input).last_hidden_state;
}

std::pair<at::Tensor, at::Tensor> StableDiffusionPipeline::generate(const TextToImageOptions& options,
                                                                    const StepCallback& on_step) {
  const int64_t scale = decoder_->vae_scale();
  check_image_size(options.width, options.height, scale);
  if (options.sampling.steps < 1)
    fail("steps", "--steps must be at least 1, got " + std::to_string(options.sampling.steps));
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  at::Tensor latents = options.initial_latents
                           ? *options.initial_latents
                           : decoder_->initial_latents(1, options.height, options.width, generator);
  at::Tensor condition = encode_prompt(options.prompt);
  if (options.sampling.guidance > 1.0) condition = at::cat({encode_prompt(options.negative), condition});
  at::Tensor final_latents = decoder_->sample(condition, latents, options.sampling, generator, on_step);
  return {final_latents, decoder_->decode(final_latents)};
}

}  // namespace kosmosg::pipeline
