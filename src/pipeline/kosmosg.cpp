#include "kosmosg/pipeline/kosmosg.h"

#include <filesystem>

#include "kosmosg/error.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/text/prompt_layout.h"
#include "models/config_checks.h"

namespace kosmosg::pipeline {

namespace fs = std::filesystem;

bool KosmosGConditionEncoder::is_kosmosg_folder(const std::string& dir) {
  return fs::exists(fs::path(dir) / "kosmosg" / "config.json");
}

KosmosGConditionEncoder::KosmosGConditionEncoder(models::KosmosGModel model, text::KosmosGTokenizer tokenizer)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)) {
  model_->eval();
}

std::unique_ptr<KosmosGConditionEncoder> KosmosGConditionEncoder::from_folder(const std::string& dir) {
  const fs::path part = fs::path(dir) / "kosmosg";
  for (const char* file : {"config.json", "model.safetensors", "sentencepiece.bpe.model", "dict.txt"})
    if (!fs::exists(part / file))
      fail("model", (part / file).string() + " is missing (a Kosmos-G folder holds kosmosg/config.json, "
                                              "model.safetensors, sentencepiece.bpe.model and dict.txt)");
  const std::string config = (part / "config.json").string();
  auto model = models::detail::build_module<models::KosmosGModel>(models::KosmosGConfig::from_file(config), config);
  io::LoadOptions load;
  load.source_name = (part / "model.safetensors").string();
  model->load(io::SafeTensors::open(load.source_name).tensors(), load);
  return std::make_unique<KosmosGConditionEncoder>(
      std::move(model), text::KosmosGTokenizer::from_files((part / "sentencepiece.bpe.model").string(),
                                                           (part / "dict.txt").string()));
}

void KosmosGConditionEncoder::to(const c10::Device& device, c10::ScalarType dtype) { model_->to(device, dtype); }

Conditions KosmosGConditionEncoder::encode(const std::string& prompt, const std::vector<at::Tensor>& images,
                                           const std::string& negative, bool guided) {
  torch::NoGradGuard no_grad;
  const auto& config = model_->config();
  const auto layout = text::layout_prompt(tokenizer_, prompt, config.connector.latent_query_num);
  if (layout.num_images != images.size())
    fail("prompt", "the prompt has " + std::to_string(layout.num_images) + " <i> placeholder" +
                       (layout.num_images == 1 ? "" : "s") + " but " + std::to_string(images.size()) +
                       " image" + (images.size() == 1 ? " was" : "s were") + " given");
  const int64_t max_length = config.aligner.max_condition_length();
  if (static_cast<int64_t>(layout.tokens.size()) > max_length)
    fail("prompt", "the prompt takes " + std::to_string(layout.tokens.size()) + " tokens (images count " +
                       std::to_string(config.connector.latent_query_num + 2) + " each) but the model's positions allow " +
                       std::to_string(max_length));
  const auto param = model_->parameters().front();
  const auto device = param.device();
  const auto batch = text::batch_prompts({layout});
  at::Tensor pixels;
  if (!images.empty()) {
    std::vector<at::Tensor> processed;
    for (const auto& image : images) processed.push_back(io::clip_pixel_values(image, config.vision.image_size));
    pixels = at::stack(processed).to(param.options());
  }
  const at::Tensor tokens = batch.tokens.to(device);
  const at::Tensor mask = batch.image_mask.to(device, at::kBool);
  Conditions c;
  if (!guided) {
    c.conditional = model_->condition(tokens, pixels, mask);
    return c;
  }
  // Both branches in one batch, as the official pipeline runs them: rows (unconditional, conditional).
  const auto negative_ids = text::negative_tokens(tokenizer_, negative);
  const at::Tensor negative_tokens =
      at::tensor(negative_ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0).to(device);
  const at::Tensor both = model_->encode_condition(tokens, pixels, mask, negative_tokens, 1);
  c.unconditional = both.slice(0, 0, 1);
  c.conditional = both.slice(0, 1, 2);
  return c;
}

}  // namespace kosmosg::pipeline
