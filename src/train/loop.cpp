#include "kosmosg/train/loop.h"

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "kosmosg/data/loader.h"
#include "kosmosg/data/source.h"
#include "kosmosg/error.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/text/clip_tokenizer.h"
#include "kosmosg/text/kosmosg_tokenizer.h"
#include "kosmosg/train/checkpoint.h"

namespace kosmosg::train {
namespace {

namespace fs = std::filesystem;

// Makes `out` a model folder: the starting folder's other parts (diffusers components, the CLIP
// teacher, model_index.json) linked in, and for a Kosmos-G stage (`kosmosg_source` not empty)
// kosmosg/ with its config and tokenizer files. The stage's weights files are written over the links.
void prepare_output(const fs::path& model, const fs::path& kosmosg_source, const fs::path& out) {
  fs::create_directories(out);
  for (const auto& e : fs::directory_iterator(model)) {
    const std::string name = e.path().filename().string();
    if (name == "kosmosg" || name == "checkpoints" || name == "samples" || name == "metrics.jsonl" ||
        fs::exists(out / name))
      continue;
    if (e.is_directory()) {
      fs::create_directories(out / name);
      for (const auto& f : fs::directory_iterator(e.path()))
        if (f.is_regular_file()) io::link_or_copy(f.path().string(), (out / name / f.path().filename()).string());
    } else if (e.is_regular_file()) {
      io::link_or_copy(e.path().string(), (out / name).string());
    }
  }
  if (kosmosg_source.empty()) return;
  fs::create_directories(out / "kosmosg");
  for (const char* file : {"config.json", "sentencepiece.bpe.model", "dict.txt"}) {
    const fs::path target = out / "kosmosg" / file;
    if (!fs::exists(target)) fs::copy_file(kosmosg_source / file, target);
  }
}

// A run killed after its last checkpoint (or before its first) logged updates that this run does
// again: keep the lines up to update `last`.
void drop_metrics_after(const fs::path& path, int64_t last) {
  std::ifstream in(path);
  if (!in) return;
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto json = io::Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (json.is_object() && json.value("update", int64_t{0}) > last) continue;
    kept += line + "\n";
  }
  io::write_text_atomically(path.string(), kept);
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  return buf;
}

}  // namespace

void RunOptions::apply_config(const io::Json& c, const std::string& what) {
  if (!c.is_object()) fail(what, "a training config must be a JSON object");
  if (c.contains("stage") && data::parse_stage(c.at("stage").get<std::string>()) != stage)
    fail(what, "is a config for the " + c.at("stage").get<std::string>() + " stage, not " + data::stage_name(stage));
  batch_size = io::config_value<int64_t>(c, "batch_size", batch_size, what);
  update_freq = io::config_value<int64_t>(c, "update_freq", update_freq, what);
  max_update = io::config_value<int64_t>(c, "max_update", max_update, what);
  seed = io::config_value<uint64_t>(c, "seed", seed, what);
  save_every = io::config_value<int64_t>(c, "save_every", save_every, what);
  keep_last = io::config_value<int64_t>(c, "keep_last", keep_last, what);
  log_every = io::config_value<int64_t>(c, "log_every", log_every, what);
  workers = io::config_value<int64_t>(c, "workers", workers, what);
  max_failure_fraction = io::config_value<double>(c, "max_failure_fraction", max_failure_fraction, what);
  stage_options.condition_drop_rate =
      io::config_value<double>(c, "condition_drop_rate", stage_options.condition_drop_rate, what);
  stage_options.no_freeze_layer = io::config_value<std::string>(c, "no_freeze_layer", stage_options.no_freeze_layer, what);
  stage_options.official_vit_checkpoint =
      io::config_value<bool>(c, "official_vit_checkpoint", stage_options.official_vit_checkpoint, what);
  stage_options.gradient_checkpointing =
      io::config_value<bool>(c, "gradient_checkpointing", stage_options.gradient_checkpointing, what);
  stage_options.kl_weight = io::config_value<double>(c, "kl_weight", stage_options.kl_weight, what);
  stage_options.fit_scaling_factor =
      io::config_value<bool>(c, "fit_scaling_factor", stage_options.fit_scaling_factor, what);
  stage_options.crop_size = io::config_value<int64_t>(c, "crop_size", stage_options.crop_size, what);
  if (stage_options.crop_size < 0)
    fail(what, "crop_size is " + std::to_string(stage_options.crop_size) + ", expected 0 (whole images) or a side in pixels");
  stage_options.train_text_encoder =
      io::config_value<bool>(c, "train_text_encoder", stage_options.train_text_encoder, what);
  stage_options.cache_latents = io::config_value<bool>(c, "cache_latents", stage_options.cache_latents, what);
  stage_options.snr_gamma = io::config_value<double>(c, "snr_gamma", stage_options.snr_gamma, what);
  stage_options.noise_offset = io::config_value<double>(c, "noise_offset", stage_options.noise_offset, what);
  if (!(stage_options.noise_offset >= 0 && stage_options.noise_offset <= 1))
    fail(what, "noise_offset is " + std::to_string(stage_options.noise_offset) + ", expected 0 (off) to 1");
  stage_options.negative_weight = io::config_value<double>(c, "negative_weight", stage_options.negative_weight, what);
  if (!(stage_options.negative_weight >= 0))
    fail(what, "negative_weight is " + std::to_string(stage_options.negative_weight) + ", expected 0 (off) or more");
  stage_options.negative_temperature =
      io::config_value<double>(c, "negative_temperature", stage_options.negative_temperature, what);
  if (!(stage_options.negative_temperature > 0))
    fail(what, "negative_temperature is " + std::to_string(stage_options.negative_temperature) + ", expected more than 0");
  const auto latents = io::config_value<std::string>(c, "target_latents", std::string("sample"), what);
  if (latents != "sample" && latents != "mean")
    fail(what, "target_latents is \"" + latents + "\", expected \"sample\" (of the VAE posterior) or \"mean\"");
  stage_options.latents_from_mean = latents == "mean";
  precision = io::config_value<std::string>(c, "precision", precision, what);
  if (c.contains("optimizer")) {
    const auto& o = c.at("optimizer");
    auto& a = optimization.adam;
    optimization.schedule.lr = io::config_value<double>(o, "lr", optimization.schedule.lr, what + " optimizer");
    if (o.contains("adam_betas")) {
      const auto betas = o.at("adam_betas").get<std::vector<double>>();
      if (betas.size() != 2) fail(what, "optimizer.adam_betas must hold two numbers");
      a.beta1 = betas[0];
      a.beta2 = betas[1];
    }
    a.eps = io::config_value<double>(o, "adam_eps", a.eps, what + " optimizer");
    a.weight_decay = io::config_value<double>(o, "weight_decay", a.weight_decay, what + " optimizer");
    optimization.clip_norm = io::config_value<double>(o, "clip_norm", optimization.clip_norm, what + " optimizer");
  }
  if (c.contains("lr_scheduler")) {
    const auto& s = c.at("lr_scheduler");
    auto& p = optimization.schedule;
    p.warmup_updates = io::config_value<int64_t>(s, "warmup_updates", p.warmup_updates, what + " lr_scheduler");
    p.total_num_update = io::config_value<int64_t>(s, "total_num_update", p.total_num_update, what + " lr_scheduler");
    p.end_learning_rate = io::config_value<double>(s, "end_learning_rate", p.end_learning_rate, what + " lr_scheduler");
    p.power = io::config_value<double>(s, "power", p.power, what + " lr_scheduler");
  }
  if (c.contains("fp16_scaler")) {
    const auto& s = c.at("fp16_scaler");
    auto& o = optimization.scaler;
    o.init_scale = io::config_value<double>(s, "init_scale", o.init_scale, what + " fp16_scaler");
    o.scale_factor = io::config_value<double>(s, "scale_factor", o.scale_factor, what + " fp16_scaler");
    o.scale_window = io::config_value<int64_t>(s, "scale_window", o.scale_window, what + " fp16_scaler");
    o.min_loss_scale = io::config_value<double>(s, "min_loss_scale", o.min_loss_scale, what + " fp16_scaler");
  }
}

RunSummary run_training(const RunOptions& o) {
  if (o.out_dir.empty()) fail_setting("train", "output folder", "no {} given");
  if (o.data.empty()) fail_setting("train", "data source", "no {} given");
  if (o.batch_size < 1) fail_setting("train", "batch size", "{} " + std::to_string(o.batch_size) + " must be at least 1");
  if (o.update_freq < 1) fail("train", "update_freq " + std::to_string(o.update_freq) + " must be at least 1");
  const int64_t target = o.steps > 0 ? o.steps : o.max_update;
  if (target < 1) fail_setting("train", "updates", "nothing to do: give the {} to reach, or max_update in the config");

  const fs::path model(o.model_dir), out(o.out_dir);
  std::string device_name = o.device;
  std::shared_ptr<ProcessGroup> group;
  if (o.launch.world_size > 1 || !o.distributed.backend.empty()) {
    if (device_name == "cuda") device_name = "cuda:" + std::to_string(o.launch.local_rank);
    group = ProcessGroup::connect(o.launch, o.distributed, device_name);
  }
  const int64_t rank = group ? group->rank() : 0, world_size = group ? group->world_size() : 1;
  const bool main_rank = rank == 0, quiet = o.quiet || !main_rank;
  CheckpointManager checkpoints(o.out_dir, o.keep_last);
  std::optional<Checkpoint> resumed;
  if (o.resume) {
    resumed = checkpoints.load_latest();
    if (!resumed && main_rank)
      spdlog::warn("asked to resume, but {} has no checkpoint yet: starting from update 0", checkpoints.folder());
  } else if (fs::exists(out / "checkpoints" / "latest")) {
    fail_setting("train", "resume",
                 "the output folder " + o.out_dir + " already holds a training run: continue it with {}, or choose another");
  }
  if (resumed) {
    const auto stage = resumed->state.at("stage").get<std::string>();
    if (stage != data::stage_name(o.stage))
      fail("train", resumed->dir + " is a checkpoint of the " + stage + " stage, not " + data::stage_name(o.stage));
  }

  StageModels models = StageModels::from_folder(o.model_dir, o.stage);
  const bool kosmosg_stage = data::is_kosmosg_stage(o.stage);
  fs::path kosmosg_source = kosmosg_stage ? model / "kosmosg" : fs::path();
  if (!o.init_from.empty() && !kosmosg_stage)
    fail_setting("train", "init-from folder",
                 std::string("{} gives kosmosg/ weights, which the ") + data::stage_name(o.stage) +
                     " stage does not use; start from that folder as the model instead");
  if (!o.init_from.empty()) {
    kosmosg_source = fs::path(o.init_from) / "kosmosg";
    for (const char* file : {"config.json", "model.safetensors"})
      if (!fs::exists(kosmosg_source / file))
        fail_setting("train", "init-from folder",
                     "{} " + o.init_from + " has no kosmosg/" + file + " (expected a previous stage's output)");
    models.kosmosg_config = io::read_json((kosmosg_source / "config.json").string());
    models.kosmosg = io::SafeTensors::open((kosmosg_source / "model.safetensors").string()).tensors();
  }
  const c10::Device device(device_name);
  OptimizationOptions optimization = o.optimization;
  optimization.precision = PrecisionPolicy::parse(o.precision, device.type());
  optimization.loss_scaling = optimization.precision.compute == at::kHalf;
  StageOptions stage_options = o.stage_options;
  stage_options.frozen_dtype = optimization.precision.compute;
  // Parameters the starting weights lack (AlignerNet's N before the align stage, a decoder
  // component given by its config alone) start from a draw the seed decides.
  constexpr uint64_t kInitDomain = 100;
  at::manual_seed(data::mix_seeds({kInitDomain, o.seed}));
  auto stage = make_stage(o.stage, models, stage_options);
  stage->model().to(device);
  optimization.precision.store(*stage);

  if (!quiet) {
    if (group)
      spdlog::info("data parallel: {} ranks over {} (launched by {}, rendezvous {}:{})", world_size, group->backend(),
                   o.launch.launcher, o.launch.master_addr, o.launch.master_port);
    std::fprintf(stderr, "%-44s %14s %14s\n", "module", "parameters", "trainable");
    int64_t all = 0, trained = 0;
    for (const auto& row : stage->summary()) {
      std::fprintf(stderr, "%-44s %14lld %14lld\n", row.module.c_str(), static_cast<long long>(row.parameters),
                   static_cast<long long>(row.trainable));
      all += row.parameters;
      trained += row.trainable;
    }
    std::fprintf(stderr, "%-44s %14lld %14lld\n", "total", static_cast<long long>(all), static_cast<long long>(trained));
  }

  std::unique_ptr<text::KosmosGTokenizer> tokenizer;
  if (kosmosg_stage)
    tokenizer = std::make_unique<text::KosmosGTokenizer>(text::KosmosGTokenizer::from_files(
        (kosmosg_source / "sentencepiece.bpe.model").string(), (kosmosg_source / "dict.txt").string()));
  std::unique_ptr<text::CLIPTokenizer> clip_tokenizer;
  if (o.stage == data::StageKind::Align)
    clip_tokenizer = std::make_unique<text::CLIPTokenizer>(text::CLIPTokenizer::from_folder(models.tokenizer_dir));

  data::LoaderOptions lo;
  for (const auto& spec : o.data) lo.sources.push_back(data::parse_source_spec(spec));
  lo.sample.stage = o.stage;
  lo.sample.tokenizer = tokenizer.get();
  lo.sample.clip_tokenizer = clip_tokenizer.get();
  stage->configure_samples(lo.sample);
  lo.batch_size = o.batch_size;
  lo.seed = o.seed;
  lo.rank = rank;
  lo.world_size = world_size;
  lo.workers = o.workers;
  lo.max_failure_fraction = o.max_failure_fraction;
  data::Loader loader(lo);

  Trainer trainer(*stage, optimization, group, o.distributed.bucket_bytes);
  if (resumed) {
    stage->load_trainable(resumed->trainable, resumed->dir + "/trainable.safetensors");
    trainer.optimizer().load_state(resumed->optimizer);
    trainer.load_state(resumed->state.at("trainer"));
    if (resumed->state.contains("stage_state")) stage->load_state(resumed->state.at("stage_state"));
    std::vector<io::Json> data_states;
    if (resumed->state.contains("data_ranks"))
      data_states = resumed->state.at("data_ranks").get<std::vector<io::Json>>();
    else
      data_states.push_back(resumed->state.at("data"));
    loader.restore_from_ranks(data_states);
    if (main_rank)
      spdlog::info("resumed from {} at update {} (saved by {} rank(s), now {})", resumed->dir, trainer.num_updates(),
                   data_states.size(), world_size);
  }
  if (group) {
    // Every replica starts from rank 0's weights, as DDP's constructor makes them.
    std::vector<at::Tensor> state;
    for (const auto& p : stage->model().parameters()) state.push_back(p);
    for (const auto& b : stage->model().buffers()) state.push_back(b);
    group->broadcast(state);
  }
  if (main_rank) prepare_output(model, kosmosg_source, out);

  RunSummary summary;
  summary.first_update = trainer.num_updates();
  auto save_model = [&] {
    if (!main_rank) return;
    for (const auto& [path, weights] : stage->output_weights())
      io::save_safetensors((out / path).string(), weights,
                           {{"format", "pt"}, {"stage", data::stage_name(o.stage)},
                            {"num_updates", std::to_string(trainer.num_updates())}});
    // Written over the starting folder's file, which the output only links to.
    for (const auto& [path, config] : stage->output_configs())
      io::write_text_atomically((out / path).string(), config.dump(2) + "\n");
  };
  auto save = [&] {
    const io::Json data_state = loader.state();
    io::Json data_ranks = io::Json::array();
    if (group)
      for (const auto& text : group->all_gather_text(data_state.dump())) data_ranks.push_back(io::Json::parse(text));
    if (!main_rank) return;
    save_model();
    io::Json state = {{"stage", data::stage_name(o.stage)},
                      {"trainer", trainer.state()},
                      {"world_size", world_size},
                      {"data", data_state},
                      // Every random draw of update n comes from generators seeded with (seed, n),
                      // so the seed is the whole RNG state.
                      {"rng", {{"seed", o.seed}, {"scheme", "data::mix_seeds(domain, seed, update)"}}}};
    if (group) state["data_ranks"] = data_ranks;
    if (const io::Json stage_state = stage->state(); !stage_state.is_null()) state["stage_state"] = stage_state;
    checkpoints.save(trainer.num_updates(), stage->trainable_state(), trainer.optimizer().state(), state);
  };

  std::ofstream metrics;
  if (main_rank) {
    drop_metrics_after(out / "metrics.jsonl", trainer.num_updates());
    metrics.open(out / "metrics.jsonl", std::ios::app);
    if (!metrics) fail("train", "cannot write " + (out / "metrics.jsonl").string());
  }
  const auto start = std::chrono::steady_clock::now();
  int64_t samples = 0;
  while (trainer.num_updates() < target) {
    const int64_t n = trainer.num_updates();
    const auto update_start = std::chrono::steady_clock::now();
    if (group) group->heartbeat(n);
    // Dropout draws from the default generator, the stage's own draws from `generator` (rows with
    // a sample seed from their own); each rank draws its own.
    constexpr uint64_t kDropoutDomain = 101, kDrawDomain = 102;
    const auto r64 = static_cast<uint64_t>(rank), n64 = static_cast<uint64_t>(n);
    at::manual_seed(data::mix_seeds({kDropoutDomain, o.seed, n64, r64}));
    at::Generator generator = at::detail::createCPUGenerator(data::mix_seeds({kDrawDomain, o.seed, n64, r64}));
    std::vector<data::Batch> batches;
    for (int64_t i = 0; i < o.update_freq; ++i) batches.push_back(loader.next());
    std::vector<std::function<StageLoss()>> forwards;
    for (const auto& b : batches) forwards.push_back([&stage, &generator, &b] { return stage->forward(b, generator); });
    // Each rank reads its own shard: the update's all-reduce also sums the loader's counts.
    const auto& stats = loader.stats();
    const UpdateResult r = trainer.update(
        forwards, {static_cast<double>(stats.samples_failed), static_cast<double>(stats.samples_filtered)});
    const int64_t batch_samples = r.samples;
    samples += batch_samples;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double update_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - update_start).count();
    const int64_t done = trainer.num_updates() - summary.first_update;
    const double eta = done > 0 ? seconds / static_cast<double>(done) * static_cast<double>(target - trainer.num_updates()) : 0;
    summary.last_loss = r.loss;

    io::Json line = {{"update", n + 1},         {"applied", r.applied},      {"loss", r.loss},
                     {"lr", r.lr},              {"grad_norm", r.grad_norm},  {"loss_scale", r.loss_scale},
                     {"sample_size", r.sample_size}, {"samples", batch_samples},
                     {"samples_per_s", static_cast<double>(batch_samples) / update_seconds},
                     {"source", batches.front().source},
                     {"samples_failed", std::llround(r.rank_sums[0])},
                     {"samples_filtered", std::llround(r.rank_sums[1])}};
    for (const auto& [k, v] : r.logs) line[k] = v;
    line["precision"] = o.precision;
    if (group) {
      line["world_size"] = world_size;
      line["comm_wait_s"] = r.communication_wait_s;
    }
    if (main_rank) metrics << line.dump() << "\n" << std::flush;
    if (!quiet && (trainer.num_updates() % std::max<int64_t>(o.log_every, 1) == 0 || trainer.num_updates() == target))
      std::fprintf(stderr, "[%s] update %lld/%lld  loss %.4f  lr %.3g  gnorm %.3f  scale %g  %.2f samples/s%s  ETA %s%s\n",
                   data::stage_name(o.stage), static_cast<long long>(trainer.num_updates()), static_cast<long long>(target),
                   r.loss, r.lr, r.grad_norm, r.loss_scale, static_cast<double>(samples) / seconds,
                   group ? ("  comm " + std::to_string(static_cast<int64_t>(r.communication_wait_s * 1000)) + " ms").c_str() : "",
                   format_duration(eta).c_str(), r.applied ? "" : "  (overflow: update skipped)");
    if (o.save_every > 0 && r.applied && trainer.num_updates() % o.save_every == 0 && trainer.num_updates() < target)
      save();
    if (main_rank && o.sample_every > 0 && o.on_sample && r.applied && trainer.num_updates() % o.sample_every == 0) {
      save_model();
      o.on_sample(trainer.num_updates());
    }
  }
  if (trainer.num_updates() > summary.first_update || !resumed) save();
  if (group) group->barrier();  // every rank ends once rank 0's output is complete
  summary.last_update = trainer.num_updates();
  const auto& stats = loader.stats();
  std::vector<double> counts{static_cast<double>(stats.samples_read), static_cast<double>(stats.samples_failed),
                             static_cast<double>(stats.samples_filtered)};
  if (group) group->all_reduce_sum(counts);
  summary.samples_read = std::llround(counts[0]);
  summary.samples_failed = std::llround(counts[1]);
  summary.samples_filtered = std::llround(counts[2]);
  if (!quiet)
    spdlog::info("{} stage: {} updates done; model folder {} ({} samples read, {} unreadable, {} filtered out)",
                 data::stage_name(o.stage), summary.last_update, o.out_dir, summary.samples_read,
                 summary.samples_failed, summary.samples_filtered);
  return summary;
}

}  // namespace kosmosg::train
