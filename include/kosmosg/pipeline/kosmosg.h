#pragma once
// Kosmos-G's condition encoder: the MLLM and AlignerNet of a model folder's kosmosg/ part
// (config.json, model.safetensors, sentencepiece.bpe.model, dict.txt). Prompts interleave text and
// images: each "<i>" takes the next image.
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "kosmosg/models/kosmosg.h"
#include "kosmosg/pipeline/condition_encoder.h"
#include "kosmosg/text/kosmosg_tokenizer.h"

namespace kosmosg::pipeline {

class KosmosGConditionEncoder : public ConditionEncoder {
 public:
  KosmosGConditionEncoder(models::KosmosGModel model, text::KosmosGTokenizer tokenizer);
  // Loads the kosmosg/ part of the model folder `dir`.
  static std::unique_ptr<KosmosGConditionEncoder> from_folder(const std::string& dir);
  // True when `dir` holds a kosmosg/ part (else it is a plain Stable Diffusion folder).
  static bool is_kosmosg_folder(const std::string& dir);

  // Checks the "<i>" count against the images and the prompt's length against the model's
  // positions.
  Conditions encode(const std::string& prompt, const std::vector<at::Tensor>& images, const std::string& negative,
                    bool guided) override;

  void to(const c10::Device& device, c10::ScalarType dtype) override;
  void store_block_weights(c10::ScalarType dtype) override { model_->store_block_weights(dtype); }
  std::string kind() const override { return "Kosmos-G"; }

  models::KosmosGModel& model() { return model_; }
  const text::KosmosGTokenizer& tokenizer() const { return tokenizer_; }

 private:
  models::KosmosGModel model_;
  text::KosmosGTokenizer tokenizer_;
};

}  // namespace kosmosg::pipeline
