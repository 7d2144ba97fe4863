#pragma once
// Stable Diffusion's condition encoder: the CLIP tokenizer and text encoder of a diffusers
// Stable Diffusion 1.x/2.x folder (text_encoder/, tokenizer/).
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "kosmosg/models/clip.h"
#include "kosmosg/pipeline/condition_encoder.h"
#include "kosmosg/text/clip_tokenizer.h"

namespace kosmosg::pipeline {

class CLIPTextConditionEncoder : public ConditionEncoder {
 public:
  CLIPTextConditionEncoder(models::CLIPTextModel text_encoder, text::CLIPTokenizer tokenizer);
  // Reads text_encoder/ and tokenizer/ of the diffusers folder `dir`.
  static std::unique_ptr<CLIPTextConditionEncoder> from_folder(const std::string& dir);

  // The text encoder's last hidden state for `text` (1×77×D), as diffusers' encode_prompt.
  at::Tensor encode_prompt(const std::string& text);
  // Text only: input images are an error (they need a Kosmos-G model).
  Conditions encode(const std::string& prompt, const std::vector<at::Tensor>& images, const std::string& negative,
                    bool guided) override;

  void to(const c10::Device& device, c10::ScalarType dtype) override;
  torch::nn::Module* text_encoder() override { return text_encoder_.ptr().get(); }
  std::string kind() const override { return "Stable Diffusion"; }

 private:
  models::CLIPTextModel text_encoder_;
  text::CLIPTokenizer tokenizer_;
};

}  // namespace kosmosg::pipeline
