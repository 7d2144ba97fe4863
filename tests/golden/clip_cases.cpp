// Golden runners for the CLIP towers, CLIPModel with the DreamBench CLIP scores, and DINO.
#include "harness.h"
#include "kosmosg/eval/scores.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/dino.h"

namespace {

using kosmosg::golden::Case;
using kosmosg::golden::Report;
namespace models = kosmosg::models;
namespace eval = kosmosg::eval;

void load(torch::nn::Module& module, const Case& c, kosmosg::io::TensorMap params = {}) {
  kosmosg::io::LoadOptions options;
  options.source_name = c.name + " param.*";
  kosmosg::io::load_weights(module, params.empty() ? c.params() : params, options);
  kosmosg::golden::place(module);
}

at::Tensor metric_tensor(const at::Tensor& scores) {
  return torch::tensor({eval::score_metric(scores)}, torch::kDouble);
}

void run_text(const Case& c, Report& report) {
  models::CLIPTextModel model(models::CLIPTextConfig::from_json(c.config, c.name));
  load(*model, c);
  torch::NoGradGuard no_grad;
  auto out = model(c.input("input_ids"));
  report.check(c, "last_hidden_state", out.last_hidden_state);
  report.check(c, "pooler_output", out.pooler_output);
}

void run_text_projection(const Case& c, Report& report) {
  models::CLIPTextModelWithProjection model(models::CLIPTextConfig::from_json(c.config, c.name));
  load(*model, c);
  torch::NoGradGuard no_grad;
  auto out = model(c.input("input_ids"));
  report.check(c, "text_embeds", out.text_embeds);
  report.check(c, "last_hidden_state", out.last_hidden_state);
}

void run_vision_projection(const Case& c, Report& report) {
  models::CLIPVisionModelWithProjection model(
      models::CLIPVisionConfig::from_json(c.config, c.name));
  load(*model, c);
  torch::NoGradGuard no_grad;
  auto out = model(c.input("pixel_values"));
  report.check(c, "image_embeds", out.image_embeds);
  report.check(c, "last_hidden_state", out.last_hidden_state);
  report.check(c, "pooler_output", out.pooler_output);
}

void run_clip_scores(const Case& c, Report& report) {
  models::CLIPModel model(models::CLIPConfig::from_json(c.config, c.name));
  // The golden files store 0-dimensional parameters with shape [1] (README); HF keeps them 0-dim.
  auto params = c.params();
  params["logit_scale"] = params.at("logit_scale").reshape({});
  load(*model, c, params);
  torch::NoGradGuard no_grad;
  auto image_1 = model->get_image_features(c.input("pixel_values_1"));
  auto image_2 = model->get_image_features(c.input("pixel_values_2"));
  auto text = model->get_text_features(c.input("input_ids"), c.input("attention_mask"));
  report.check(c, "image_features_1", image_1);
  report.check(c, "image_features_2", image_2);
  report.check(c, "text_features", text);
  auto clip_t = eval::clip_score(image_1, text);
  auto clip_i = eval::clip_score(image_1, image_2);
  report.check(c, "clip_t_score", clip_t);
  report.check(c, "clip_i_score", clip_i);
  report.check(c, "clip_t_metric", metric_tensor(clip_t));
  report.check(c, "clip_i_metric", metric_tensor(clip_i));
}

void run_dino(const Case& c, Report& report) {
  models::DinoViT model(models::DinoViTConfig::from_json(c.config, c.name));
  load(*model, c);
  torch::NoGradGuard no_grad;
  auto cls_1 = model(c.input("pixel_values_1"));
  auto cls_2 = model(c.input("pixel_values_2"));
  report.check(c, "cls_1", cls_1);
  report.check(c, "cls_2", cls_2);
  report.check(c, "last_hidden_state_1", model->forward_features(c.input("pixel_values_1")));
  report.check(c, "dino_score", eval::dino_score(cls_1, cls_2));
}

}  // namespace

KOSMOSG_GOLDEN_MODULE("CLIPTextModel", run_text);
KOSMOSG_GOLDEN_MODULE("CLIPTextModelWithProjection", run_text_projection);
KOSMOSG_GOLDEN_MODULE("CLIPVisionModelWithProjection", run_vision_projection);
KOSMOSG_GOLDEN_MODULE("CLIPModel", run_clip_scores);
KOSMOSG_GOLDEN_MODULE("DinoVisionTransformer", run_dino);
