#pragma once
// Generation from interleaved text-and-image prompts with a Kosmos-G model folder: the diffusers
// SD1.5 layout (unet/, vae/, scheduler/) plus kosmosg/ (config.json, model.safetensors,
// sentencepiece.bpe.model, dict.txt).
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "kosmosg/models/kosmosg.h"
#include "kosmosg/pipeline/diffusion.h"
#include "kosmosg/text/kosmosg_tokenizer.h"

namespace kosmosg::pipeline {

class KosmosGPipeline {
 public:
  // Loads a Kosmos-G model folder (see `is_kosmosg_folder`).
  static KosmosGPipeline from_folder(const std::string& dir);
  // True when `dir` holds a kosmosg/ part (else it is a plain Stable Diffusion folder).
  static bool is_kosmosg_folder(const std::string& dir);

  // The UNet conditions for one prompt: [2, Q, W] (unconditional, conditional), or [1, Q, W]
  // without guidance. Checks the "<i>" count against the images.
  at::Tensor encode_condition(const std::string& prompt, const std::vector<at::Tensor>& images,
                              const std::string& negative, bool guided);
  // One image: final latents (1×4×h×w) and the decoded image in [-1, 1] (1×3×H×W).
  std::pair<at::Tensor, at::Tensor> generate(const GenerateOptions& options, const StepCallback& on_step = {});

  void to(const c10::Device& device, c10::ScalarType dtype);
  DiffusionDecoder& decoder() { return *decoder_; }
  models::KosmosGModel& model() { return model_; }
  const text::KosmosGTokenizer& tokenizer() const { return *tokenizer_; }

 private:
  std::unique_ptr<DiffusionDecoder> decoder_;
  models::KosmosGModel model_{nullptr};
  std::unique_ptr<text::KosmosGTokenizer> tokenizer_;
};

}  // namespace kosmosg::pipeline
