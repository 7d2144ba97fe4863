// Golden runners for the trainer (shared/golden/kosmosg README §i–l): the learning-rate schedule,
// three official updates of the instruct and align stages, and the stage-1 loss and gradients.
// Each runs the trainer's own code path: make_stage, the stage forward, Trainer::update.
#include <cmath>

#include "harness.h"
#include "support.h"
#include "kosmosg/nn/autocast.h"
#include "kosmosg/train/stage.h"
#include "kosmosg/train/trainer.h"

namespace kosmosg::golden {
namespace {

using nlohmann::json;

void run_lr_schedule(const std::string& path, const json& golden, Report& report) {
  for (const auto& c : golden.at("configs")) {
    const auto& cfg = c.at("config");
    train::PolynomialDecay schedule;
    schedule.lr = cfg.at("lr").get<double>();
    schedule.warmup_updates = static_cast<int64_t>(cfg.at("warmup_updates").get<double>());
    schedule.total_num_update = static_cast<int64_t>(cfg.at("total_num_update").get<double>());
    schedule.end_learning_rate = cfg.at("end_learning_rate").get<double>();
    schedule.power = cfg.at("power").get<double>();
    size_t failures = 0, total = 0;
    auto close = [](double a, double b) { return std::abs(a - b) <= 1e-12 + 1e-9 * std::abs(b); };
    for (const auto& point : c.at("points")) {
      ++total;
      failures += !close(schedule.at(point.at("num_updates").get<int64_t>()), point.at("lr").get<double>());
    }
    ++total;
    failures += !close(schedule.initial(), c.at("lr_before_any_step_update").get<double>());
    report.count(c.at("name").get<std::string>(), failures, total);
  }
}

std::vector<std::string> names_of(const Case& c, const std::string& key) {
  return kosmosg::io::parse_json(c.file.metadata().at(key), c.name + " " + key).get<std::vector<std::string>>();
}

train::OptimizationOptions optimization(const Case& c) {
  const auto& o = c.config.at("optimization");
  train::OptimizationOptions opt;
  opt.schedule.lr = o.at("lr").get<double>();
  opt.schedule.warmup_updates = o.at("warmup_updates").get<int64_t>();
  opt.schedule.total_num_update = o.at("total_num_update").get<int64_t>();
  opt.schedule.end_learning_rate = o.at("end_learning_rate").get<double>();
  opt.schedule.power = o.at("power").get<double>();
  std::string betas = o.at("adam_betas").get<std::string>();  // "(0.9,0.98)"
  std::sscanf(betas.c_str(), "(%lf,%lf)", &opt.adam.beta1, &opt.adam.beta2);
  opt.adam.eps = o.at("adam_eps").get<double>();
  opt.adam.weight_decay = o.at("weight_decay").get<double>();
  opt.clip_norm = o.at("clip_norm").get<double>();
  return opt;
}

// The stage on the test device, its updates under the trainer's precision policy in the test
// dtype (float16 with the loss scaler).
void place_training(train::Stage& stage, train::OptimizationOptions& opt) {
  stage.model().to(placement().device);
  opt.precision.device = placement().device.type();
  opt.precision.compute = placement().dtype;
  opt.loss_scaling = placement().dtype == at::kHalf;
}

data::Batch batch_of(const Case& c) {
  data::Batch b;
  b.src_tokens = c.training_input("src_tokens");
  b.target = c.training_input("target");
  b.img_gpt_input_mask = c.training_input("img_gpt_input_mask");
  b.gpt_loss_mask = c.training_input("gpt_loss_mask");
  if (c.has("input.gpt_img_src_tokens")) b.images = c.training_input("gpt_img_src_tokens");
  if (c.has("input.img_tgt_tokens")) b.target_images = c.training_input("img_tgt_tokens");
  b.nsentences = c.training_input("nsentences").item<int64_t>();
  b.ntokens = c.training_input("ntokens").item<int64_t>();
  return b;
}

at::Tensor scalar(double v) { return at::full({1}, v, at::TensorOptions().dtype(at::kFloat)); }

// The sample size, gradient norm and rate of update `s`; the rate is kept for check_final.
void check_update(const Case& c, Report& report, const std::string& s, const train::UpdateResult& r,
                  std::vector<double>& lrs) {
  report.check(c, "sample_size_" + s, at::full({1}, r.sample_size, at::TensorOptions().dtype(at::kLong)));
  report.check(c, "grad_norm_" + s, scalar(r.grad_norm));
  report.check(c, "lr_" + s, scalar(r.lr));
  lrs.push_back(r.lr);
}

// The checks every update case shares: the final trainable tensors, their change as a whole, the
// frozen tensors untouched, and the tensors without gradient moved by weight decay alone.
void check_final(const Case& c, Report& report, train::Stage& stage, const std::vector<double>& lrs,
                 double weight_decay) {
  const auto initial = c.params();
  const auto final_state = stage.trainable_state();
  double delta_error = 0, delta_norm = 0;
  for (const auto& name : names_of(c, "trainable_names")) {
    auto it = final_state.find(name);
    if (it == final_state.end()) {
      report.fail("final." + name, "the stage does not train it");
      continue;
    }
    const at::Tensor actual = it->second.to(at::kCPU, at::kDouble);
    report.check(c, "final." + name, it->second);
    if (name == "gpt_model.decoder.output_projection.weight") continue;  // the tied head, counted once
    const at::Tensor ref_delta = c.expected("final." + name).to(at::kDouble) - initial.at(name).to(at::kDouble);
    const at::Tensor delta = actual - initial.at(name).to(at::kDouble);
    delta_error += (delta - ref_delta).pow(2).sum().item<double>();
    delta_norm += ref_delta.pow(2).sum().item<double>();
  }
  const double global = std::sqrt(delta_error / delta_norm);
  const double bound = placed_tolerance(std::stod(c.tolerance.at("final_delta_global").get<std::string>()));
  if (global > bound)
    report.fail("final_delta_global", c10::str(global, " > ", bound));
  else
    report.count("final_delta_global (" + c10::str(global) + ")", 0, 1);

  const auto state = kosmosg::io::state_dict(stage.model());
  size_t changed = 0, total = 0;
  for (const auto& name : names_of(c, "frozen_names")) {
    auto it = state.find(name);
    if (it == state.end()) continue;  // buffers upstream keeps but never reads
    ++total;
    changed += !at::equal(it->second.cpu(), initial.at(name));
  }
  report.count("frozen tensors unchanged", changed, total);

  size_t off = 0, count = 0;
  for (const auto& name : names_of(c, "trainable_without_gradient")) {
    ++count;
    at::Tensor expected = initial.at(name).to(at::kDouble);
    for (size_t k = 1; k < lrs.size(); ++k) expected = expected * (1 - lrs[k] * weight_decay);
    off += relative_l2(final_state.at(name), expected) > 1e-6;
  }
  if (count) report.count("trainable_without_gradient moved by weight decay only", off, count);
}

void run_train_instruct(const Case& c, Report& report) {
  train::StageOptions options;
  options.no_freeze_layer = c.config.at("model").at("no_freeze_layer").get<std::string>();
  options.official_vit_checkpoint = !names_of(c, "trainable_without_gradient").empty();
  auto stage = train::make_stage(data::StageKind::Instruct, test::golden_stage_models(c.file), options);
  auto opt = optimization(c);
  place_training(*stage, opt);
  train::Trainer trainer(*stage, opt);
  const data::Batch batch = batch_of(c);
  std::vector<double> lrs;
  for (int k = 1; k <= 3; ++k) {
    const std::string s = std::to_string(k);
    train::InstructDraws draws{c.training_input("vae_eps_" + s), c.training_input("noise_" + s),
                               c.training_input("timesteps_" + s), c.training_input("random_p_" + s)};
    at::Tensor latents;
    auto r = trainer.update({[&] {
      auto out = train::instruct_forward_with_draws(*stage, batch, draws);
      latents = out.outputs.at("latents");
      return out;
    }});
    report.check(c, "latents_" + s, latents);
    report.check(c, "loss_" + s, scalar(r.loss * static_cast<double>(r.sample_size)));
    check_update(c, report, s, r, lrs);
  }
  check_final(c, report, *stage, lrs, opt.adam.weight_decay);
}

void run_train_align(const Case& c, Report& report) {
  auto stage = train::make_stage(data::StageKind::Align, test::golden_stage_models(c.file), {});
  auto opt = optimization(c);
  place_training(*stage, opt);
  train::Trainer trainer(*stage, opt);
  const data::Batch batch = batch_of(c);
  const at::Tensor teacher = c.training_input("clip_embed");
  std::vector<double> lrs;
  for (int k = 1; k <= 3; ++k) {
    const std::string s = std::to_string(k);
    auto r = trainer.update({[&] { return train::align_forward_with_teacher(*stage, batch, teacher); }});
    report.check(c, "loss_" + s, scalar(r.loss));
    report.check(c, "mse_loss_" + s, scalar(r.logs.at("mse_loss")));
    report.check(c, "rec_loss_" + s, scalar(r.logs.at("rec_loss")));
    check_update(c, report, s, r, lrs);
  }
  check_final(c, report, *stage, lrs, opt.adam.weight_decay);
}

void run_lm_loss(const Case& c, Report& report) {
  auto stage = train::make_stage(data::StageKind::LM, test::golden_stage_models(c.file), {});
  stage->model().to(placement().device);
  stage->train_mode();
  train::StageLoss out;
  {
    nn::AutocastGuard autocast(placement().device.type(), placement().dtype);
    out = stage->forward(batch_of(c), at::Generator());
  }
  const at::Tensor mean = out.loss / static_cast<double>(out.sample_size);
  mean.backward();
  report.check(c, "logits", out.outputs.at("logits"));
  report.check(c, "loss", mean.detach().reshape({1}));
  report.check(c, "token_count", at::full({1}, out.sample_size, at::TensorOptions().dtype(at::kLong)));
  std::map<std::string, at::Tensor> grads;
  for (const auto& item : stage->model().named_parameters()) grads[item.key()] = item.value().grad();
  for (const auto& name : c.config.at("grad_names").get<std::vector<std::string>>()) {
    auto it = grads.find(name);
    if (it == grads.end() || !it->second.defined())
      report.fail("grad." + name, "no gradient");
    else
      report.check(c, "grad." + name, it->second);
  }
}

KOSMOSG_GOLDEN_JSON("lr_schedule.json", run_lr_schedule);
KOSMOSG_GOLDEN_MODULE("KosmosGTrainInstruct", run_train_instruct);
KOSMOSG_GOLDEN_MODULE("KosmosGTrainAlign", run_train_align);
KOSMOSG_GOLDEN_MODULE("KosmosGLMLoss", run_lm_loss);

}  // namespace
}  // namespace kosmosg::golden
