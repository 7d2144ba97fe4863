#pragma once
// Text-to-image with a diffusers Stable Diffusion 1.x/2.x folder: CLIP tokenizer and text encoder
// give the condition, DiffusionDecoder samples and decodes.
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

#include "kosmosg/models/clip.h"
#include "kosmosg/pipeline/diffusion.h"
#include "kosmosg/text/clip_tokenizer.h"

namespace kosmosg::pipeline {

class StableDiffusionPipeline {
 public:
  // Reads model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/ of `dir`.
  static StableDiffusionPipeline from_folder(const std::string& dir);

  // The text encoder's last hidden state for `text` (1×77×D).
  at::Tensor encode_prompt(const std::string& text);
  // One image from a text prompt (options.images must be empty): final latents (1×4×h×w) and
  // the decoded image in [-1, 1] (1×3×H×W).
  std::pair<at::Tensor, at::Tensor> generate(const GenerateOptions& options, const StepCallback& on_step = {});

  void to(const c10::Device& device, c10::ScalarType dtype);
  DiffusionDecoder& decoder() { return *decoder_; }
  models::CLIPTextModel& text_encoder() { return text_encoder_; }

 private:
  std::unique_ptr<DiffusionDecoder> decoder_;
  models::CLIPTextModel text_encoder_{nullptr};
  std::unique_ptr<text::CLIPTokenizer> tokenizer_;
};

}  // namespace kosmosg::pipeline
