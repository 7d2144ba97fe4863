#include "kosmosg/pipeline/kosmosg.h"

#include <filesystem>

#include "kosmosg/error.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/text/prompt_layout.h"
#include "models/config_checks.h"

namespace kosmosg::pipeline {

namespace fs = std::filesystem;

bool KosmosGPipeline::is_kosmosg_folder(const std::string& dir) {
  return fs::exists(fs::path(dir) / "kosmosg" / "config.json");
}

KosmosGPipeline KosmosGPipeline::from_folder(const std::string& dir) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) fail("model", dir + " is not a folder (expected a Kosmos-G model folder)");
  const fs::path part = root / "kosmosg";
  for (const char* file : {"config.json", "model.safetensors", "sentencepiece.bpe.model", "dict.txt"})
    if (!fs::exists(part / file))
      fail("model", (part / file).string() + " is missing (a Kosmos-G folder holds kosmosg/config.json, "
                                              "model.safetensors, sentencepiece.bpe.model and dict.txt)");
  KosmosGPipeline p;
  p.decoder_ = std::make_unique<DiffusionDecoder>(DiffusionDecoder::from_folder(dir));
  const std::string config = (part / "config.json").string();
  p.model_ = models::detail::build_module<models::KosmosGModel>(models::KosmosGConfig::from_file(config), config);
  io::LoadOptions load;
  load.source_name = (part / "model.safetensors").string();
  p.model_->load(io::SafeTensors::open(load.source_name).tensors(), load);
  p.model_->eval();
  p.tokenizer_ = std::make_unique<text::KosmosGTokenizer>(text::KosmosGTokenizer::from_files(
      (part / "sentencepiece.bpe.model").string(), (part / "dict.txt").string()));
  return p;
}

void KosmosGPipeline::to(const c10::Device& device, c10::ScalarType dtype) {
  decoder_->to(device, dtype);
  model_->to(device, dtype);
}

at::Tensor KosmosGPipeline::encode_condition(const std::string& prompt, const std::vector<at::Tensor>& images,
                                             const std::string& negative, bool guided) {
  torch::NoGradGuard no_grad;
  const auto& config = model_->config();
  const auto layout = text::layout_prompt(*tokenizer_, prompt, config.connector.latent_query_num);
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
  if (!guided) return model_->condition(tokens, pixels, mask);
  const auto negative_ids = text::negative_tokens(*tokenizer_, negative);
  const at::Tensor negative_tokens = at::tensor(negative_ids, at::TensorOptions().dtype(at::kLong)).unsqueeze(0).to(device);
  return model_->encode_condition(tokens, pixels, mask, negative_tokens, 1);
}

std::pair<at::Tensor, at::Tensor> KosmosGPipeline::generate(const GenerateOptions& options,
                                                            const StepCallback& on_step) {
  decoder_->check(options);
  const at::Tensor condition =
      encode_condition(options.prompt, options.images, options.negative, options.sampling.guidance > 1.0);
  return decoder_->generate(condition, options, on_step);
}

}  // namespace kosmosg::pipeline
