#pragma once
// Text-to-image with a diffusers Stable Diffusion 1.x/2.x folder: CLIP tokenizer and text encoder
// give the condition, DiffusionDecoder samples and decodes.
#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>

#include "kosmosg/models/clip.h"
#include "kosmosg/pipeline/diffusion.h"
#include "kosmosg/text/clip_tokenizer.h"

namespace kosmosg::pipeline {

struct TextToImageOptions {
  std::string prompt;
  std::string negative;
  SamplingOptions sampling;
  int64_t width = 512, height = 512;
  uint64_t seed = 0;
  std::optional<at::Tensor> initial_latents;  // 1×4×h×w; replaces the seeded noise
};

class StableDiffusionPipeline {
 public:
  // Reads model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/ of `dir`.
  static StableDiffusionPipeline from_folder(const std::string& dir);

  // The text encoder's last hidden state for `text` (1×77×D).
  at::Tensor encode_prompt(const std::string& text);
  // One image: latents after sampling (1×4×h×w) and the decoded image in [-1, 1] (1×3×H×W).
  std::pair<at::Tensor, at::Tensor> generate(const TextToImageOptions& options,
                                             const StepCallback& on_step = {});

  void to(const c10::Device& device, c10::ScalarType dtype);
  DiffusionDecoder& decoder() { return *decoder_; }

 private:
  std::unique_ptr<DiffusionDecoder> decoder_;
  models::CLIPTextModel text_encoder_{nullptr};
  std::unique_ptr<text::CLIPTokenizer> tokenizer_;
};

// Checks `width`×`height` for a model whose latents are `scale`× smaller: positive multiples of
// `scale` no larger than 4096 per side. Errors name the offending value.
void check_image_size(int64_t width, int64_t height, int64_t scale);

}  // namespace kosmosg::pipeline
