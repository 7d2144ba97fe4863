// Golden runners for the Kosmos-G modules (shared/golden/kosmosg, README §a–f).
#include "harness.h"

#include "kosmosg/models/aligner.h"
#include "kosmosg/models/connector.h"
#include "kosmosg/models/kosmosg.h"
#include "kosmosg/models/mllm.h"
#include "kosmosg/models/vit.h"

namespace {

using namespace kosmosg;
using kosmosg::golden::Case;
using kosmosg::golden::Report;

io::LoadOptions strict_from(const Case& c) {
  io::LoadOptions o;
  o.source_name = c.name + " param.*";
  return o;
}

void run_mllm(const Case& c, Report& report) {
  models::GPTModel model(models::MLLMConfig::from_json(c.config, c.name));
  model->load(c.params(), strict_from(c));
  golden::place(*model);
  torch::NoGradGuard no_grad;
  auto out = model(c.input("src_tokens"), c.input("img_features"), c.input("img_gpt_input_mask"));
  report.check(c, "logits", out.logits);
  // Upstream returns the hidden states time-first.
  report.check(c, "condition", out.hidden.transpose(0, 1));
}

void run_clip_vision(const Case& c, Report& report) {
  models::ClipVisualOnly model(models::ViTConfig::from_json(c.config, c.name));
  model->load(c.params(), strict_from(c), /*ignore_unused_attn=*/false);
  golden::place(*model);
  torch::NoGradGuard no_grad;
  report.check(c, "features", model(c.input("pixel_values")).transpose(0, 1));
}

void run_xconnector(const Case& c, Report& report) {
  models::XConnectorConfig config = models::XConnectorConfig::from_json(c.config, c.name);
  models::XConnector model(config);
  io::load_weights(*model, c.params(), strict_from(c));
  golden::place(*model);
  torch::NoGradGuard no_grad;
  const int64_t tokens = c.input("src_len").item<int64_t>();
  auto features = c.input("features").view({-1, tokens, config.input_dim});
  report.check(c, "output", model(features).reshape({-1, config.output_dim}));
}

void run_aligner(const Case& c, Report& report) {
  models::Aligner model(models::AlignerConfig::from_json(c.config, c.name));
  io::load_weights(*model, c.params(), strict_from(c));
  golden::place(*model);
  torch::NoGradGuard no_grad;
  auto out = model(c.input("condition"), c.input("padding_mask"), c.input("clip_embed"));
  report.check(c, "aligned", out.aligned);
  report.check(c, "reconstruction", out.reconstruction);
  report.check(c, "mse_loss", out.mse_loss.reshape({1}));
  report.check(c, "rec_loss", out.rec_loss.reshape({1}));
}

void run_aligner_encoder(const Case& c, Report& report) {
  models::AlignerEncoder model(models::AlignerConfig::from_json(c.config, c.name));
  io::load_weights(*model, c.params(), strict_from(c));
  golden::place(*model);
  torch::NoGradGuard no_grad;
  report.check(c, "output", model(c.input("condition"), c.input("padding_mask")));
}

void run_encode_condition(const Case& c, Report& report) {
  models::KosmosGModel model(models::KosmosGConfig::from_json(c.config, c.name));
  model->load(c.params(), strict_from(c));
  golden::place(*model);
  torch::NoGradGuard no_grad;
  const int64_t per_prompt = c.config.at("num_images_per_prompt").get<int64_t>();
  report.check(c, "condition",
               model->encode_condition(c.input("src_tokens"), c.input("pixel_values"),
                                       c.input("img_gpt_input_mask"), c.input("negative_tokens"),
                                       per_prompt));
}

KOSMOSG_GOLDEN_MODULE("GPTmodel", run_mllm);
KOSMOSG_GOLDEN_MODULE("ClipVisualOnly", run_clip_vision);
KOSMOSG_GOLDEN_MODULE("XConnector", run_xconnector);
KOSMOSG_GOLDEN_MODULE("Aligner", run_aligner);
KOSMOSG_GOLDEN_MODULE("Aligner_encoder", run_aligner_encoder);
KOSMOSG_GOLDEN_MODULE("KosmosGmodel", run_encode_condition);

}  // namespace
