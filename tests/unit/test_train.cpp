// The trainer's parts on their own: fairseq Adam, the schedule, clipping, the loss scaler,
// checkpoints, and the stages' trainable sets on the golden training models.
#include <torch/torch.h>
#include <torch/version.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "kosmosg/error.h"
#include "kosmosg/io/builtin_configs.h"
#include "kosmosg/train/checkpoint.h"
#include "kosmosg/train/diffusion_loss.h"
#include "kosmosg/train/optim.h"
#include "kosmosg/train/stage.h"
#include "kosmosg/train/trainer.h"
#include "support.h"

namespace {

using namespace kosmosg;
namespace fs = std::filesystem;

TEST(TrainAdam, MatchesTheFairseqFormulaStepByStep) {
  at::Tensor p = torch::tensor({1.0f, -2.0f, 0.5f}).set_requires_grad(true);
  train::AdamOptions o;
  train::FairseqAdam adam({{"p", p}}, o);
  const std::vector<std::vector<float>> grads = {{0.1f, -0.2f, 0.3f}, {0.4f, 0.0f, -0.1f}, {-0.3f, 0.2f, 0.05f}};
  std::vector<double> ref = {1.0, -2.0, 0.5}, m(3, 0), v(3, 0);
  for (int t = 1; t <= 3; ++t) {
    const double lr = 1e-2 * t;
    p.mutable_grad() = torch::tensor(grads[t - 1]);
    adam.step(lr);
    for (int i = 0; i < 3; ++i) {
      const double g = grads[t - 1][i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double step = lr * std::sqrt(1 - std::pow(o.beta2, t)) / (1 - std::pow(o.beta1, t));
      ref[i] -= lr * o.weight_decay * ref[i];
      ref[i] -= step * m[i] / (std::sqrt(v[i]) + o.eps);
    }
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(p[i].item<double>(), ref[i], 1e-6);
}

TEST(TrainAdam, SkipsTensorsWithoutGradientAndRestoresState) {
  at::Tensor a = torch::ones({2}).set_requires_grad(true), b = torch::ones({2}).set_requires_grad(true);
  train::FairseqAdam adam({{"a", a}, {"b", b}}, {});
  a.mutable_grad() = torch::full({2}, 0.5f);
  adam.step(0.1);
  EXPECT_TRUE(at::equal(b, torch::ones({2})));
  const auto state = adam.state();
  EXPECT_EQ(state.at("step.a").item<int64_t>(), 1);
  EXPECT_EQ(state.at("step.b").item<int64_t>(), 0);
  EXPECT_FALSE(state.count("exp_avg.b"));

  at::Tensor a2 = a.detach().clone().set_requires_grad(true), b2 = b.detach().clone().set_requires_grad(true);
  train::FairseqAdam restored({{"a", a2}, {"b", b2}}, {});
  restored.load_state(state);
  a.mutable_grad() = torch::full({2}, -0.25f);
  a2.mutable_grad() = torch::full({2}, -0.25f);
  adam.step(0.1);
  restored.step(0.1);
  EXPECT_TRUE(at::equal(a, a2));

  auto bad = state;
  bad["exp_avg.a"] = torch::zeros({3});
  test::expect_error([&] { restored.load_state(bad); }, {"optimiser state of a", "shape"});
  auto extra = state;
  extra["step.c"] = torch::zeros({1}, at::kLong);
  test::expect_error([&] { restored.load_state(extra); }, {"does not train"});
}

TEST(TrainSchedule, PolynomialDecayWithWarmup) {
  train::PolynomialDecay s;
  s.lr = 1e-3;
  s.warmup_updates = 4;
  s.total_num_update = 14;
  EXPECT_DOUBLE_EQ(s.at(0), 0);
  EXPECT_DOUBLE_EQ(s.at(2), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(4), 1e-3);
  EXPECT_NEAR(s.at(9), 5e-4, 1e-15);
  EXPECT_DOUBLE_EQ(s.at(14), 0);
  EXPECT_DOUBLE_EQ(s.at(100), 0);
  EXPECT_DOUBLE_EQ(s.initial(), 2.5e-4);
}

TEST(TrainClip, ReturnsThePreClipNormAndScalesToMaxNorm) {
  at::Tensor a = torch::zeros({2}).set_requires_grad(true), b = torch::zeros({1}).set_requires_grad(true);
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  const double norm = train::clip_grad_norm({{"a", a}, {"b", b}}, 2.0);
  EXPECT_NEAR(norm, 5.0, 1e-6);
  EXPECT_NEAR(at::cat({a.grad(), b.grad()}).norm().item<double>(), 2.0, 1e-5);
  EXPECT_NEAR(train::clip_grad_norm({{"a", a}, {"b", b}}, 10.0), 2.0, 1e-5);
  EXPECT_NEAR(at::cat({a.grad(), b.grad()}).norm().item<double>(), 2.0, 1e-5);
}

TEST(TrainLossScaler, GrowsAfterTheWindowHalvesOnOverflowAndStops) {
  train::DynamicLossScaler::Options o;
  o.scale_window = 3;
  train::DynamicLossScaler s(o);
  EXPECT_EQ(s.scale(), 4);
  EXPECT_TRUE(s.check(1.0));
  EXPECT_TRUE(s.check(1.0));
  EXPECT_EQ(s.scale(), 4);
  EXPECT_TRUE(s.check(1.0));  // the third clean update in a row
  EXPECT_EQ(s.scale(), 8);
  EXPECT_FALSE(s.check(INFINITY));
  EXPECT_EQ(s.scale(), 4);
  EXPECT_FALSE(s.check(NAN));
  EXPECT_EQ(s.scale(), 2);
  train::DynamicLossScaler restored(o);
  restored.load_state(s.state());
  EXPECT_EQ(restored.scale(), 2);
  for (int i = 0; i < 14; ++i) s.check(INFINITY);
  test::expect_error([&] {
    for (int i = 0; i < 10; ++i) s.check(INFINITY);
  }, {"loss scale", "minimum"});
}

TEST(TrainCheckpoint, SavesLoadsKeepsTheLastAndIgnoresStaging) {
  const fs::path dir = fs::temp_directory_path() / ("kosmosg_ckpt_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  train::CheckpointManager manager(dir.string(), 2);
  EXPECT_FALSE(manager.load_latest().has_value());
  for (int64_t step : {1, 2, 3}) {
    manager.save(step, {{"w", torch::full({2}, static_cast<float>(step))}}, {{"step.w", torch::ones({1}, at::kLong)}},
                 {{"step", step}});
  }
  // A staging folder left by a killed save is ignored and cleaned up by the next save.
  fs::create_directories(dir / "checkpoints" / "step_00000004.partial-1");
  auto latest = manager.load_latest();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->state.at("step").get<int64_t>(), 3);
  EXPECT_EQ(latest->trainable.at("w")[0].item<float>(), 3.0f);
  EXPECT_FALSE(fs::exists(dir / "checkpoints" / "step_00000001"));
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / "step_00000002"));
  manager.save(4, {{"w", torch::zeros({2})}}, {}, {{"step", 4}});
  EXPECT_FALSE(fs::exists(dir / "checkpoints" / "step_00000004.partial-1"));

  fs::remove(dir / "checkpoints" / "step_00000004" / "state.json");
  test::expect_error([&] { manager.load_latest(); }, {"state.json", "incomplete"});
  std::ofstream(dir / "checkpoints" / "latest") << "../../etc\n";
  test::expect_error([&] { manager.load_latest(); }, {"latest", "step_<N>"});
  fs::remove_all(dir);
}

// The golden training models: small but complete Kosmos-G models under the official names.
train::StageModels golden_models(const std::string& name) {
  return test::golden_stage_models(
      io::SafeTensors::open(test::shared_dir() + "/golden/kosmosg/" + name + ".safetensors"));
}

std::set<std::string> trainable_names(const train::Stage& stage) {
  std::set<std::string> names;
  for (const auto& [name, p] : stage.trainable()) names.insert(name);
  return names;
}

TEST(TrainStage, TrainableSetsFollowTheOfficialFreezing) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto models = golden_models("train_instruct_steps");
  auto instruct = train::make_stage(data::StageKind::Instruct, models, {});
  auto lm = train::make_stage(data::StageKind::LM, models, {});
  for (const auto* stage : {instruct.get(), lm.get()}) {
    const auto names = trainable_names(*stage);
    EXPECT_TRUE(names.count("gpt_model.decoder.embed_tokens.weight"));
    EXPECT_TRUE(names.count("img_connector.latent_query"));
    EXPECT_TRUE(names.count("img_model.visual.transformer.resblocks.1.mlp.c_fc.weight"));
    EXPECT_TRUE(names.count("img_model.visual.ln_post.weight"));
    EXPECT_FALSE(names.count("img_model.visual.transformer.resblocks.0.mlp.c_fc.weight"));
    EXPECT_FALSE(names.count("img_model.visual.conv1.weight"));
    for (const auto& n : names) EXPECT_NE(n.rfind("diffusion_unet.", 0), 0u) << n;
    for (const auto& n : names) EXPECT_NE(n.rfind("vae.", 0), 0u) << n;
  }
  EXPECT_TRUE(trainable_names(*instruct).count("aligner.encoder_query"));
  EXPECT_FALSE(trainable_names(*lm).count("aligner.encoder_query"));

  auto align = train::make_stage(data::StageKind::Align, golden_models("train_align_steps"), {});
  for (const auto& n : trainable_names(*align)) EXPECT_EQ(n.rfind("aligner.", 0), 0u) << n;
  EXPECT_TRUE(trainable_names(*align).count("aligner.decoder_query"));
  EXPECT_TRUE(trainable_names(*align).count("aligner.decoder_proj.output_projection.weight"));

  // The summary table counts each parameter once.
  int64_t total = 0, trained = 0, expected = 0;
  for (const auto& row : instruct->summary()) total += row.parameters, trained += row.trainable;
  for (const auto& [n, p] : instruct->trainable()) expected += p.numel();
  EXPECT_EQ(trained, expected);
  EXPECT_GT(total, trained);
}

TEST(TrainStage, MissingWeightsAreRefusedByName) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto models = golden_models("train_instruct_steps");
  auto no_aligner = models;
  for (auto it = no_aligner.kosmosg.begin(); it != no_aligner.kosmosg.end();)
    it = it->first.rfind("aligner.", 0) == 0 ? no_aligner.kosmosg.erase(it) : std::next(it);
  test::expect_error([&] { train::make_stage(data::StageKind::Instruct, no_aligner, {}); },
                     {"instruct", "aligner.encoder_proj.*"});
  auto no_unet = models;
  no_unet.unet.clear();
  test::expect_error([&] { train::make_stage(data::StageKind::Instruct, no_unet, {}); }, {"UNet"});
  auto no_mllm = models;
  for (auto it = no_mllm.kosmosg.begin(); it != no_mllm.kosmosg.end();)
    it = it->first.rfind("gpt_model.", 0) == 0 ? no_mllm.kosmosg.erase(it) : std::next(it);
  test::expect_error([&] { train::make_stage(data::StageKind::Align, no_mllm, {}); }, {"align", "gpt_model"});
  test::expect_error([&] { train::make_stage(data::StageKind::LM, no_mllm, {}); }, {"lm", "gpt_model"});
  test::expect_error([&] { train::StageModels::from_folder("/nonexistent", data::StageKind::LM); }, {"not a folder"});
}

TEST(TrainStage, TrainableStateRoundTripsAndRejectsStrangers) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto stage = train::make_stage(data::StageKind::Align, golden_models("train_align_steps"), {});
  auto state = stage->trainable_state();
  for (auto& [name, t] : state) t = t.clone().add_(1);
  stage->load_trainable(state, "test");
  for (const auto& [name, p] : stage->trainable()) EXPECT_TRUE(at::equal(p, state.at(name))) << name;
  state["gpt_model.decoder.layer_norm.weight"] = torch::zeros({32});
  test::expect_error([&] { stage->load_trainable(state, "ckpt.safetensors"); }, {"ckpt.safetensors", "does not train"});
}

}  // namespace

namespace {

data::Batch golden_instruct_batch(const io::SafeTensors& file, int64_t begin, int64_t end, int64_t image_begin,
                                  int64_t image_end) {
  data::Batch b;
  b.src_tokens = file.get("input.src_tokens").slice(0, begin, end);
  b.target = file.get("input.target").slice(0, begin, end);
  b.img_gpt_input_mask = file.get("input.img_gpt_input_mask").slice(0, begin, end);
  b.gpt_loss_mask = file.get("input.gpt_loss_mask").slice(0, begin, end);
  b.images = file.get("input.gpt_img_src_tokens").slice(0, image_begin, image_end);
  b.target_images = file.get("input.img_tgt_tokens").slice(0, begin, end);
  b.nsentences = end - begin;
  return b;
}

train::InstructDraws golden_draws(const io::SafeTensors& file, int64_t begin, int64_t end) {
  return {file.get("input.vae_eps_1").slice(0, begin, end), file.get("input.noise_1").slice(0, begin, end),
          file.get("input.timesteps_1").slice(0, begin, end), file.get("input.random_p_1").slice(0, begin, end)};
}

train::OptimizationOptions quick_optimization() {
  train::OptimizationOptions o;
  o.schedule.lr = 1e-3;
  o.schedule.warmup_updates = 1;
  o.schedule.total_num_update = 1000;
  return o;
}

}  // namespace

// fit_scaling_factor: the output VAE config's scaling_factor is 1 / the standard deviation of the
// latents the stage trained on, and the source of that figure travels in the stage state.
TEST(TrainStage, VaeFitsTheScalingFactorToItsLatents) {
  train::StageModels models;
  models.vae_config = io::builtin_config("shapes/vae/config.json");
  train::StageOptions options;
  options.fit_scaling_factor = true;
  torch::manual_seed(0);
  auto stage = train::make_stage(data::StageKind::Vae, models, options);
  EXPECT_TRUE(stage->output_configs().empty()) << "nothing measured yet";
  data::Batch batch;
  batch.target_images = torch::rand({2, 3, 64, 64}) * 2 - 1;
  auto generator = at::detail::createCPUGenerator(1);
  std::vector<at::Tensor> seen;
  for (int i = 0; i < 3; ++i) seen.push_back(stage->forward(batch, generator).outputs.at("latents").detach());
  const at::Tensor z = at::stack(seen).to(at::kDouble);  // equal weights while under the 100-batch window
  const double expected = 1.0 / std::sqrt(z.square().mean().item<double>() - std::pow(z.mean().item<double>(), 2));
  const auto configs = stage->output_configs();
  ASSERT_EQ(configs.count("vae/config.json"), 1u);
  const auto& config = configs.at("vae/config.json");
  EXPECT_NEAR(config.at("scaling_factor").get<double>(), expected, 1e-9 * expected);
  EXPECT_EQ(config.at("block_out_channels"), models.vae_config.at("block_out_channels"));

  auto resumed = train::make_stage(data::StageKind::Vae, models, options);
  resumed->load_state(stage->state());
  EXPECT_EQ(resumed->output_configs().at("vae/config.json"), config);
  EXPECT_TRUE(train::make_stage(data::StageKind::Vae, models, {})->state().is_null());
}

// snr_gamma: each sample's squared error is weighted by min(SNR_t, γ) / SNR_t (ε-prediction), so a
// nearly noise-free timestep counts little and a noisy one fully; a negative γ is refused.
TEST(TrainDiffusionLoss, MinSnrWeightsEachSample) {
  torch::manual_seed(0);
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::builtin_config("shapes/unet/config.json")));
  unet->eval();
  const diffusion::DDPMTraining noise(io::builtin_config("shapes/scheduler/scheduler_config.json"));
  train::DiffusionLoss plain(unet, noise), weighted(unet, noise, 0.1, c10::kFloat, false, 5.0);
  const at::Tensor latents = torch::randn({3, 4, 16, 16}), condition = torch::randn({3, 77, 64});
  const at::Tensor null_condition = torch::randn({1, 77, 64});
  const train::DiffusionLossDraws draws{torch::randn({3, 4, 16, 16}), torch::tensor({10, 300, 900}, at::kLong),
                                        torch::ones({3})};
  torch::NoGradGuard no_grad;
  std::vector<double> ratios;
  for (int64_t b = 0; b < 3; ++b) {
    const train::DiffusionLossDraws row{draws.noise.narrow(0, b, 1), draws.timesteps.narrow(0, b, 1),
                                        draws.random_p.narrow(0, b, 1)};
    const double p = plain.forward(latents.narrow(0, b, 1), condition.narrow(0, b, 1), null_condition, row).loss.item<double>();
    const double w = weighted.forward(latents.narrow(0, b, 1), condition.narrow(0, b, 1), null_condition, row).loss.item<double>();
    const double alpha_bar = noise.alphas_cumprod()[draws.timesteps[b].item<int64_t>()].item<double>();
    const double snr = alpha_bar / (1 - alpha_bar);
    EXPECT_NEAR(w, p * std::min(snr, 5.0) / snr, 1e-5 * p) << "row " << b;
    ratios.push_back(w / p);
  }
  EXPECT_LT(ratios[0], 0.1);
  EXPECT_NEAR(ratios[2], 1.0, 1e-6);
  const double whole = weighted.forward(latents, condition, null_condition, draws).loss.item<double>();
  EXPECT_GT(whole, 0.0);
  EXPECT_THROW(train::DiffusionLoss(unet, noise, 0.1, c10::kFloat, false, -1.0), std::exception);
}

// noise_offset: the noise is the plain draw plus the offset times one more normal per sample and
// channel, drawn right after it (diffusers' order); off, the draws are the official ones; a
// negative offset is refused.
TEST(TrainDiffusionLoss, NoiseOffsetShiftsEachChannelByOneDraw) {
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::builtin_config("shapes/unet/config.json")));
  const diffusion::DDPMTraining noise(io::builtin_config("shapes/scheduler/scheduler_config.json"));
  const train::DiffusionLoss plain(unet, noise), offset(unet, noise, 0.1, c10::kFloat, false, 0.0, 0.25);
  const at::Tensor latents = torch::zeros({2, 4, 8, 8});
  const auto plain_draws = plain.draw(latents, at::detail::createCPUGenerator(7));
  const auto offset_draws = offset.draw(latents, at::detail::createCPUGenerator(7));

  at::Generator reference = at::detail::createCPUGenerator(7);
  const at::Tensor normal = at::randn({2, 4, 8, 8}, reference, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor shift = at::randn({2, 4, 1, 1}, reference, at::TensorOptions().dtype(at::kFloat));
  EXPECT_TRUE(plain_draws.noise.equal(normal));
  EXPECT_TRUE(offset_draws.noise.allclose(normal + 0.25 * shift, 0, 1e-6));
  EXPECT_TRUE((offset_draws.noise - plain_draws.noise).std({2, 3}).max().item<double>() < 1e-6);
  const at::Tensor timesteps = noise.random_timesteps(2, at::kCPU, reference);
  EXPECT_TRUE(offset_draws.timesteps.equal(timesteps));
  EXPECT_THROW(train::DiffusionLoss(unet, noise, 0.1, c10::kFloat, false, 0.0, -0.1), std::exception);
}

namespace {

// The shapes world's decoder configs (weights from a seeded draw) with the tiny SD1.5 tokenizer.
train::StageModels shapes_t2i_models() {
  train::StageModels models;
  models.unet_config = io::builtin_config("shapes/unet/config.json");
  models.vae_config = io::builtin_config("shapes/vae/config.json");
  models.text_encoder_config = io::builtin_config("shapes/text_encoder/config.json");
  models.scheduler_config = io::builtin_config("shapes/scheduler/scheduler_config.json");
  models.tokenizer_dir = (fs::path(test::shared_dir()) / "fixtures" / "tiny-sd15" / "tokenizer").string();
  return models;
}

}  // namespace

// cache_latents: a target image is encoded once; later batches, in any order, take its posterior
// from the cache (so a change to the VAE afterwards does not reach it), a new image is encoded
// when it comes, and the first encode agrees with a stage that encodes every batch.
TEST(TrainStage, T2ICachesEachTargetImagesPosterior) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const train::StageModels models = shapes_t2i_models();
  train::StageOptions caching;
  caching.cache_latents = true;
  torch::manual_seed(0);
  auto cached = train::make_stage(data::StageKind::T2I, models, caching);
  torch::manual_seed(0);
  auto encoding = train::make_stage(data::StageKind::T2I, models, {});
  torch::manual_seed(1);
  const at::Tensor images = torch::rand({3, 3, 64, 64}) * 2 - 1;
  auto batch_of = [&](const std::vector<int64_t>& rows) {
    data::Batch batch;
    std::vector<at::Tensor> targets;
    for (const int64_t r : rows) {
      targets.push_back(images[r]);
      batch.captions.push_back("a red circle on a blue background");
      batch.sample_seeds.push_back(100 + static_cast<uint64_t>(r));
    }
    batch.target_images = at::stack(targets);
    return batch;
  };
  auto latents = [](train::Stage& stage, const data::Batch& batch) {
    return stage.forward(batch, at::detail::createCPUGenerator(0)).outputs.at("latents");
  };
  const at::Tensor first = latents(*cached, batch_of({0, 1}));
  EXPECT_TRUE(at::allclose(first, latents(*encoding, batch_of({0, 1})), 1e-4, 1e-5));
  for (auto* stage : {cached.get(), encoding.get()}) {
    torch::NoGradGuard no_grad;
    for (auto& p : stage->model().named_parameters())
      if (p.key().rfind("vae.encoder.", 0) == 0) p.value().add_(0.05);
  }
  const at::Tensor again = latents(*cached, batch_of({1, 0, 2}));
  EXPECT_TRUE(at::equal(again[0], first[1]));
  EXPECT_TRUE(at::equal(again[1], first[0]));
  const at::Tensor reencoded = latents(*encoding, batch_of({1, 0, 2}));
  EXPECT_FALSE(at::allclose(reencoded[0], first[1], 1e-3, 1e-3)) << "the changed VAE encodes differently";
  EXPECT_TRUE(at::allclose(again[2], reencoded[2], 1e-4, 1e-5)) << "a new image is encoded by the VAE as it is now";
}

// A diffusion target's posterior sample and the diffusion noise are separate draws: had they been
// one, the UNet would learn to predict noise that is part of its target, and a stage with
// separate draws (instruct) would find it lost. target_latents "mean" takes the posterior's mean,
// which no seed moves.
TEST(TrainStage, T2IDrawsThePosteriorSampleApartFromTheNoise) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const train::StageModels models = shapes_t2i_models();
  train::StageOptions from_mean;
  from_mean.latents_from_mean = true;
  torch::manual_seed(0);
  auto sampling = train::make_stage(data::StageKind::T2I, models, {});
  torch::manual_seed(0);
  auto meaning = train::make_stage(data::StageKind::T2I, models, from_mean);
  torch::manual_seed(1);
  const at::Tensor images = torch::rand({2, 3, 64, 64}) * 2 - 1;
  auto batch_seeded = [&](uint64_t seed) {
    data::Batch batch;
    batch.target_images = images;
    batch.captions = {"a red circle on a blue background", "a blue square on a red background"};
    batch.sample_seeds = {seed, seed + 1};
    return batch;
  };
  torch::NoGradGuard no_grad;
  auto run = [](train::Stage& stage, const data::Batch& batch) {
    return stage.forward(batch, at::detail::createCPUGenerator(0)).outputs;
  };
  const auto sampled = run(*sampling, batch_seeded(7));
  const auto mean = run(*meaning, batch_seeded(7));
  EXPECT_TRUE(at::equal(mean.at("latents"), run(*meaning, batch_seeded(70)).at("latents"))) << "the mean is no draw";
  EXPECT_FALSE(at::allclose(sampled.at("latents"), run(*sampling, batch_seeded(70)).at("latents")));
  EXPECT_TRUE(at::equal(sampled.at("noise"), mean.at("noise"))) << "the same seeds draw the same diffusion noise";
  for (int64_t b = 0; b < 2; ++b) {
    const at::Tensor posterior_noise = (sampled.at("latents")[b] - mean.at("latents")[b]).flatten();
    const at::Tensor noise = sampled.at("noise")[b].flatten();
    const at::Tensor a = posterior_noise - posterior_noise.mean(), n = noise - noise.mean();
    const double correlation = ((a * n).sum() / (a.norm() * n.norm())).item<double>();
    EXPECT_LT(std::abs(correlation), 0.2) << "row " << b << ": the posterior sample and the noise share their draw";
  }
}

// rows_loss gives a row's loss under another condition on the same noisy latents: under the
// forward's own condition it is the forward's sample_loss, under another it differs.
TEST(TrainDiffusionLoss, RowsLossRedoesChosenRowsUnderAnotherCondition) {
  torch::manual_seed(0);
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::builtin_config("shapes/unet/config.json")));
  unet->eval();
  const diffusion::DDPMTraining noise(io::builtin_config("shapes/scheduler/scheduler_config.json"));
  train::DiffusionLoss loss(unet, noise, 0.1, c10::kFloat, false, 5.0);
  const at::Tensor latents = torch::randn({3, 4, 16, 16}), condition = torch::randn({3, 77, 64});
  const train::DiffusionLossDraws draws{torch::randn({3, 4, 16, 16}), torch::tensor({10, 300, 900}, at::kLong),
                                        torch::ones({3})};
  torch::NoGradGuard no_grad;
  const auto out = loss.forward(latents, condition, torch::zeros({1, 77, 64}), draws);
  EXPECT_NEAR(out.loss.item<double>(), out.sample_loss.sum().item<double>(), 1e-6);
  const at::Tensor rows = torch::tensor({2, 0}, at::kLong);
  const at::Tensor same = loss.rows_loss(out, latents, draws, rows, condition.index_select(0, rows));
  EXPECT_TRUE(at::allclose(same, out.sample_loss.index_select(0, rows), 1e-4, 1e-7));
  const at::Tensor other = loss.rows_loss(out, latents, draws, rows, torch::randn({2, 77, 64}));
  EXPECT_FALSE(at::allclose(other, same, 1e-3, 1e-6));
  test::expect_error([&] { loss.rows_loss(out, latents, draws, rows, condition); }, {"3 rows", "2 row indices"});
}

// negative_weight: each row with a negative caption (and a condition not dropped) adds
// weight × softplus((L⁺ − L⁻) / τ), so a negative that is the caption itself adds weight × ln 2,
// rows without one add nothing, and the diffusion loss itself is unchanged.
TEST(TrainStage, T2INegativesAddTheClassifierLossOfEachRowWithOne) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const train::StageModels models = shapes_t2i_models();
  train::StageOptions plain, contrasted;
  plain.condition_drop_rate = contrasted.condition_drop_rate = 0.0;
  plain.train_text_encoder = contrasted.train_text_encoder = true;
  contrasted.negative_weight = 0.5;
  torch::manual_seed(0);
  auto without = train::make_stage(data::StageKind::T2I, models, plain);
  torch::manual_seed(0);
  auto with = train::make_stage(data::StageKind::T2I, models, contrasted);
  torch::manual_seed(1);
  data::Batch batch;
  batch.target_images = torch::rand({3, 3, 64, 64}) * 2 - 1;
  batch.captions = {"a red circle next to a blue square on a green background", "a blue square on a red background",
                    "a green triangle next to a red circle on a blue background"};
  batch.negatives = {batch.captions[0], "", batch.captions[2]};
  batch.sample_seeds = {1, 2, 3};
  torch::NoGradGuard no_grad;
  const auto a = without->forward(batch, at::detail::createCPUGenerator(0));
  const auto b = with->forward(batch, at::detail::createCPUGenerator(0));
  EXPECT_NEAR(b.logs.at("diffusion_loss"), a.logs.at("diffusion_loss"), 1e-6);
  EXPECT_EQ(a.logs.count("negative_loss"), 0u);
  EXPECT_NEAR(b.loss.item<double>() - a.loss.item<double>(), 0.5 * 2 * std::log(2.0), 1e-4);
  EXPECT_NEAR(b.logs.at("negative_loss"), std::log(2.0), 1e-4);
  batch.negatives = {"a blue circle next to a red square on a green background", "",
                     "a red triangle next to a green circle on a blue background"};
  const auto c = with->forward(batch, at::detail::createCPUGenerator(0));
  EXPECT_NEAR(c.logs.at("diffusion_loss"), a.logs.at("diffusion_loss"), 1e-6);
  EXPECT_GT(std::abs(c.logs.at("negative_loss") - std::log(2.0)), 1e-6) << "a real negative denoises differently";
  batch.negatives = {"", "", ""};
  const auto d = with->forward(batch, at::detail::createCPUGenerator(0));
  EXPECT_NEAR(d.loss.item<double>(), a.loss.item<double>(), 1e-6);
  EXPECT_EQ(d.logs.at("negative_loss"), 0.0);
}

TEST(TrainTrainer, AccumulatedMicroBatchesEqualOneBatch) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto file = io::SafeTensors::open(test::shared_dir() + "/golden/kosmosg/train_instruct_steps.safetensors");
  auto whole = train::make_stage(data::StageKind::Instruct, golden_models("train_instruct_steps"), {});
  auto split = train::make_stage(data::StageKind::Instruct, golden_models("train_instruct_steps"), {});
  train::Trainer a(*whole, quick_optimization()), b(*split, quick_optimization());
  for (int k = 0; k < 2; ++k) {
    const auto ra = a.update({[&] { return train::instruct_forward_with_draws(*whole, golden_instruct_batch(file, 0, 2, 0, 3), golden_draws(file, 0, 2)); }});
    const auto rb = b.update({[&] { return train::instruct_forward_with_draws(*split, golden_instruct_batch(file, 0, 1, 0, 1), golden_draws(file, 0, 1)); },
                              [&] { return train::instruct_forward_with_draws(*split, golden_instruct_batch(file, 1, 2, 1, 3), golden_draws(file, 1, 2)); }});
    EXPECT_EQ(ra.sample_size, rb.sample_size);
    EXPECT_NEAR(ra.loss, rb.loss, 1e-5 * std::abs(ra.loss));
    EXPECT_NEAR(ra.grad_norm, rb.grad_norm, 1e-4 * ra.grad_norm);
  }
  for (size_t i = 0; i < whole->trainable().size(); ++i)
    EXPECT_TRUE(at::allclose(whole->trainable()[i].second, split->trainable()[i].second, 1e-4, 1e-6))
        << whole->trainable()[i].first;
}

TEST(TrainTrainer, InstructLossFallsOnFixedDraws) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  const auto file = io::SafeTensors::open(test::shared_dir() + "/golden/kosmosg/train_instruct_steps.safetensors");
  auto stage = train::make_stage(data::StageKind::Instruct, golden_models("train_instruct_steps"), {});
  // Only the condition trains and the tiny UNet is random, so the reachable drop is modest; with the
  // draws fixed the descent is smooth.
  train::Trainer trainer(*stage, quick_optimization());
  const auto batch = golden_instruct_batch(file, 0, 2, 0, 3);
  const auto draws = golden_draws(file, 0, 2);
  std::vector<double> losses;
  for (int k = 0; k < 25; ++k)
    losses.push_back(trainer.update({[&] { return train::instruct_forward_with_draws(*stage, batch, draws); }}).loss);
  EXPECT_LT(losses.back(), 0.95 * losses.front()) << c10::str(losses);
  for (size_t k = 2; k < losses.size(); ++k) EXPECT_LT(losses[k], losses[k - 1]) << c10::str(losses);
  EXPECT_EQ(trainer.num_updates(), 25);
}

TEST(TrainTrainer, Fp16OverflowSkipsTheUpdateAndHalvesTheScale) {
  KOSMOSG_REQUIRE_SHARED_DATA();
  auto stage = train::make_stage(data::StageKind::Align, golden_models("train_align_steps"), {});
  auto o = quick_optimization();
  o.loss_scaling = true;
  train::Trainer trainer(*stage, o);
  const auto before = stage->trainable_state();
  std::map<std::string, at::Tensor> copy;
  for (const auto& [n, t] : before) copy[n] = t.clone();
  const auto r = trainer.update({[&] {
    train::StageLoss l;
    l.loss = stage->trainable().front().second.sum() * INFINITY;
    return l;
  }});
  EXPECT_FALSE(r.applied);
  EXPECT_EQ(r.loss_scale, 4);
  EXPECT_EQ(trainer.num_updates(), 0);
  for (const auto& [n, t] : stage->trainable_state()) EXPECT_TRUE(at::equal(t, copy.at(n))) << n;
  EXPECT_EQ(trainer.state().at("loss_scaler").at("scale").get<double>(), 2);
}

// fairseq's --memory-efficient-bf16: every weight is stored in bfloat16, Adam's moments stay float32,
// and three updates follow the float32-master run within bfloat16's resolution.
TEST(TrainTrainer, MemoryEfficientBf16StoresHalfWeightsAndKeepsFloat32Moments) {
  KOSMOSG_REQUIRE_SHARED_DATA();
#if TORCH_VERSION_MAJOR < 2
  GTEST_SKIP() << KOSMOSG_SKIP_MARKER "bfloat16 training on the CPU needs LibTorch 2.x";
#endif
  const auto file = io::SafeTensors::open(test::shared_dir() + "/golden/kosmosg/train_instruct_steps.safetensors");
  auto master = train::make_stage(data::StageKind::Instruct, golden_models("train_instruct_steps"), {});
  train::StageOptions half_options;
  half_options.frozen_dtype = at::kBFloat16;
  auto half = train::make_stage(data::StageKind::Instruct, golden_models("train_instruct_steps"), half_options);
  auto o = quick_optimization();
  o.precision = train::PrecisionPolicy::parse("memory-efficient-bf16", c10::DeviceType::CPU);
  ASSERT_TRUE(o.precision.memory_efficient);
  o.precision.store(*half);
  for (const auto& p : half->model().parameters()) ASSERT_EQ(p.scalar_type(), at::kBFloat16);
  train::Trainer a(*master, quick_optimization()), b(*half, o);
  const auto batch = golden_instruct_batch(file, 0, 2, 0, 3);
  const auto draws = golden_draws(file, 0, 2);
  for (int k = 0; k < 3; ++k) {
    const auto ra = a.update({[&] { return train::instruct_forward_with_draws(*master, batch, draws); }});
    const auto rb = b.update({[&] { return train::instruct_forward_with_draws(*half, batch, draws); }});
    EXPECT_NEAR(rb.loss, ra.loss, 0.03 * ra.loss) << k;
    EXPECT_NEAR(rb.grad_norm, ra.grad_norm, 0.05 * ra.grad_norm) << k;
  }
  for (const auto& [name, moment] : b.optimizer().state())
    if (name.rfind("exp_avg", 0) == 0) EXPECT_EQ(moment.scalar_type(), at::kFloat) << name;
  for (size_t i = 0; i < half->trainable().size(); ++i) {
    const auto& [name, p] = half->trainable()[i];
    EXPECT_EQ(p.scalar_type(), at::kBFloat16) << name;
    const at::Tensor reference = master->trainable()[i].second;
    EXPECT_LE((p.to(at::kFloat) - reference).abs().max().item<double>(), 2e-2 * reference.abs().max().item<double>() + 1e-3)
        << name;
  }
}

// With half-precision weights the loss scale and the clip factor are applied in one deferred
// multiplication; an overflow still skips the update, leaves the weights alone and halves the scale.
TEST(TrainTrainer, MemoryEfficientOverflowSkipsTheUpdate) {
  KOSMOSG_REQUIRE_SHARED_DATA();
#if TORCH_VERSION_MAJOR < 2
  GTEST_SKIP() << KOSMOSG_SKIP_MARKER "bfloat16 training on the CPU needs LibTorch 2.x";
#endif
  auto stage = train::make_stage(data::StageKind::Align, golden_models("train_align_steps"), {});
  auto o = quick_optimization();
  o.precision = train::PrecisionPolicy::parse("memory-efficient-bf16", c10::DeviceType::CPU);
  o.loss_scaling = true;
  o.precision.store(*stage);
  train::Trainer trainer(*stage, o);
  std::map<std::string, at::Tensor> copy;
  for (const auto& [n, t] : stage->trainable_state()) copy[n] = t.clone();
  auto overflow = trainer.update({[&] {
    train::StageLoss l;
    l.loss = stage->trainable().front().second.sum() * INFINITY;
    return l;
  }});
  EXPECT_FALSE(overflow.applied);
  for (const auto& [n, t] : stage->trainable_state()) EXPECT_TRUE(at::equal(t, copy.at(n))) << n;
  EXPECT_EQ(trainer.state().at("loss_scaler").at("scale").get<double>(), 2);
  // A clean update at scale 2: the gradient norm is reported unscaled and the step is clipped to 2.
  const at::Tensor& first = stage->trainable().front().second;
  auto clean = trainer.update({[&] {
    train::StageLoss l;
    l.loss = first.to(at::kFloat).sum() * 100;
    l.sample_size = 1;
    return l;
  }});
  EXPECT_TRUE(clean.applied);
  EXPECT_NEAR(clean.grad_norm, 100 * std::sqrt(static_cast<double>(first.numel())), 1e-6 * clean.grad_norm);
  const double clipped = 2 / std::sqrt(static_cast<double>(first.numel()));
  const at::Tensor moment = trainer.optimizer().state().at("exp_avg." + stage->trainable().front().first);
  EXPECT_EQ(moment.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::allclose(moment, at::full_like(moment, 0.1 * clipped), 1e-2, 0)) << moment.flatten().slice(0, 0, 4);
  EXPECT_EQ(first.scalar_type(), at::kBFloat16);
  EXPECT_EQ(trainer.num_updates(), 1);
}
