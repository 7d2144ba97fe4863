#pragma once
// The Kosmos-G conditioning model (upstream KosmosGmodel without the UNet and VAE): images ->
// ViT -> XConnector -> MLLM (features in the image slots) -> AlignerNet M -> [B, Q, W] UNet
// conditions, plus the unconditional branch for classifier-free guidance.
//
// Config layout (configs/kosmosg/*.json):
//   { "mllm":      MLLMConfig keys      (upstream spelling "gpt" also read),
//     "vision":    ViTConfig keys       ("clip"),
//     "connector": XConnectorConfig keys ("xconnector"),
//     "aligner":   AlignerConfig keys (either of its layouts),
//     "null_token": 0,                  the unconditional prompt [[null_token]] (<s>)
//     "image_token_length": 64 }        optional; must equal connector.latent_query_num
// Other top-level keys are ignored, so a file may carry more sections (tokenizer, unet, ...).
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>

#include "kosmosg/io/config.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/aligner.h"
#include "kosmosg/models/connector.h"
#include "kosmosg/models/mllm.h"
#include "kosmosg/models/vit.h"

namespace kosmosg::models {

// The sub-configs of the conditioning model, checked against each other.
struct KosmosGConfig {
  MLLMConfig mllm;
  ViTConfig vision;
  XConnectorConfig connector;
  AlignerConfig aligner;
  int64_t null_token = 0;

  // Parses the layout above; `what` names the config in errors.
  static KosmosGConfig from_json(const io::Json& json, const std::string& what = "kosmosg config");
  // Reads and parses a JSON file.
  static KosmosGConfig from_file(const std::string& path);
};

// The entries of `weights` whose names start with `prefix`, with the prefix removed.
io::TensorMap strip_prefix(const io::TensorMap& weights, const std::string& prefix);

// `gpt_model`, `aligner` (M only), `img_model`, `img_connector` under the upstream names.
class KosmosGModelImpl : public torch::nn::Module {
 public:
  explicit KosmosGModelImpl(const KosmosGConfig& config);
  // pixel_values [N, 3, S, S] -> image-slot embeddings [N·Q, C] in prompt order.
  at::Tensor image_embeddings(const at::Tensor& pixel_values);
  // M(MLLM(...)): src_tokens [B, T] (padded with the pad id), optional pixel_values and
  // img_gpt_input_mask [B, T] -> [B, num_queries, W].
  at::Tensor condition(const at::Tensor& src_tokens, const at::Tensor& pixel_values = {},
                       const at::Tensor& img_gpt_input_mask = {});
  // The inference conditioning: [2·B·K, Q, W], first B·K copies of the unconditional embedding
  // (of [[null_token]], or of negative_tokens [1, Tn] when Tn > 1), then the B conditional rows
  // tiled K = num_images_per_prompt times (c_0..c_{B-1}, c_0..c_{B-1}, ...).
  at::Tensor encode_condition(const at::Tensor& src_tokens, const at::Tensor& pixel_values,
                              const at::Tensor& img_gpt_input_mask,
                              const at::Tensor& negative_tokens, int64_t num_images_per_prompt = 1);
  // Loads a full Kosmos-G state dict (top-level names gpt_model.*, img_model.*, img_connector.*,
  // aligner.*). Entries of the other components (diffusion_unet.*, vae.*, the alignment-stage
  // aligner.decoder*, aligner.decoder_query and aligner.clip_encoder.*) are skipped; any other
  // unknown, missing or mis-shaped name is an error under options.strict.
  void load(const io::TensorMap& weights, const io::LoadOptions& options = {});
  // Checkpoints the blocks of gpt_model, img_model and aligner in training (see nn::checkpoint).
  void set_gradient_checkpointing(bool on, bool reentrant_compat = false);
  // Stores the weights of the MLLM's layers, the ViT's blocks and the aligner's layers in `dtype`
  // (bfloat16 or float16) and computes them in float32 (nn::store_block_weights): inference with
  // float32 inputs only.
  void store_block_weights(c10::ScalarType dtype);
  const KosmosGConfig& config() const { return config_; }

  GPTModel gpt_model{nullptr};
  AlignerEncoder aligner{nullptr};
  ClipVisualOnly img_model{nullptr};
  XConnector img_connector{nullptr};

 private:
  KosmosGConfig config_;
};
TORCH_MODULE(KosmosGModel);

}  // namespace kosmosg::models
