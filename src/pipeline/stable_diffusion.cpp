#include "kosmosg/pipeline/stable_diffusion.h"

#include <filesystem>

#include "kosmosg/error.h"

namespace kosmosg::pipeline {

namespace fs = std::filesystem;

CLIPTextConditionEncoder::CLIPTextConditionEncoder(models::CLIPTextModel text_encoder, text::CLIPTokenizer tokenizer)
    : text_encoder_(std::move(text_encoder)), tokenizer_(std::move(tokenizer)) {
  text_encoder_->eval();
}

std::unique_ptr<CLIPTextConditionEncoder> CLIPTextConditionEncoder::from_folder(const std::string& dir) {
  const fs::path root(dir);
  return std::make_unique<CLIPTextConditionEncoder>(models::load_clip_text_model((root / "text_encoder").string()),
                                                    text::CLIPTokenizer::from_folder((root / "tokenizer").string()));
}

void CLIPTextConditionEncoder::to(const c10::Device& device, c10::ScalarType dtype) {
  text_encoder_->to(device, dtype);
}

at::Tensor CLIPTextConditionEncoder::encode_prompt(const std::string& text) {
  torch::NoGradGuard no_grad;
  // As many tokens as the encoder has positions: 77 for SD, fewer for a small encoder of one's own.
  const auto ids = tokenizer_.encode(text, static_cast<size_t>(text_encoder_->config().max_position_embeddings));
  const auto param = text_encoder_->parameters().front();
  at::Tensor input = at::tensor(ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0).to(param.device());
  return text_encoder_->forward(input).last_hidden_state;
}

Conditions CLIPTextConditionEncoder::encode(const std::string& prompt, const std::vector<at::Tensor>& images,
                                            const std::string& negative, bool guided) {
  if (!images.empty())
    fail("image", "a Stable Diffusion model takes no input images (they need a Kosmos-G model folder, with kosmosg/)");
  Conditions c;
  c.conditional = encode_prompt(prompt);
  if (guided) c.unconditional = encode_prompt(negative);
  return c;
}

}  // namespace kosmosg::pipeline
