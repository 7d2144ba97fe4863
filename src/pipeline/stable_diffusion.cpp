#include "kosmosg/pipeline/stable_diffusion.h"

#include <filesystem>

#include "kosmosg/error.h"
#include "kosmosg/io/config.h"

namespace kosmosg::pipeline {

namespace fs = std::filesystem;

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

std::pair<at::Tensor, at::Tensor> StableDiffusionPipeline::generate(const GenerateOptions& options,
                                                                    const StepCallback& on_step) {
  if (!options.images.empty())
    fail("image", "a Stable Diffusion folder takes no input images (they need a Kosmos-G model)");
  decoder_->check(options);
  at::Tensor condition = encode_prompt(options.prompt);
  if (options.sampling.guidance > 1.0) condition = at::cat({encode_prompt(options.negative), condition});
  return decoder_->generate(condition, options, on_step);
}

}  // namespace kosmosg::pipeline
