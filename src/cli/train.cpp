#include <spdlog/spdlog.h>

#include <filesystem>

#include "cli/commands.h"
#include "kosmosg/error.h"
#include "kosmosg/io/builtin_configs.h"
#include "kosmosg/io/image.h"
#include "kosmosg/pipeline/pipeline.h"
#include "kosmosg/runtime.h"
#include "kosmosg/train/loop.h"

namespace kosmosg::cli {
namespace {

struct TrainArgs {
  std::string stage, model, out, config, init_from, device = "cpu", precision, dist_backend;
  double dist_timeout_s = 600, dist_bucket_mb = 25;
  std::vector<std::string> data, sample_prompts, sample_images;
  int64_t sample_every = 0, sample_steps = 20;
  std::optional<int64_t> steps, batch_size, save_every, keep_last, workers, update_freq, log_every;
  std::optional<uint64_t> seed;
  std::optional<double> lr;
  std::optional<int64_t> warmup;
  bool resume = false, quiet = false, official_vit_checkpoint = false, gradient_checkpointing = false;
  int threads = 0;
};

// Generates every sample prompt with the model folder as it stands at `update` into
// OUT/samples/update_<N>_<k>.png (fixed seeds, so the images of different updates compare).
void write_samples(const TrainArgs& a, int64_t update) {
  namespace fs = std::filesystem;
  auto pipe = pipeline::Pipeline::from_folder(a.out);
  const fs::path dir = fs::path(a.out) / "samples";
  fs::create_directories(dir);
  size_t next_image = 0;
  for (size_t k = 0; k < a.sample_prompts.size(); ++k) {
    pipeline::GenerateOptions g;
    g.prompt = a.sample_prompts[k];
    for (size_t pos = g.prompt.find("<i>"); pos != std::string::npos; pos = g.prompt.find("<i>", pos + 3)) {
      if (next_image >= a.sample_images.size())
        fail("train", "--sample-prompt '" + g.prompt + "' needs more --sample-image files than given");
      g.images.push_back(io::read_image(a.sample_images[next_image++]));
    }
    g.sampling.steps = a.sample_steps;
    g.seed = k;
    g.width = g.height = pipe.decoder().native_size();
    const auto image = pipe.generate(g).second;
    const std::string path = (dir / ("update_" + std::to_string(update) + "_" + std::to_string(k) + ".png")).string();
    io::write_png(path, pipeline::to_uint8_images(image)[0], {{"prompt", g.prompt}, {"update", std::to_string(update)}});
  }
  spdlog::info("wrote {} sample image(s) for update {} to {}", a.sample_prompts.size(), update, dir.string());
}

int run_train(const TrainArgs& a) {
  configure_threads(a.threads);
  keep_freed_memory();
  train::RunOptions o;
  o.stage = data::parse_stage(a.stage);
  o.apply_config(io::builtin_config(std::string("train/") + a.stage + ".json"), "configs/train/" + a.stage + ".json");
  if (!a.config.empty()) o.apply_config(io::read_json(a.config), a.config);
  o.model_dir = a.model;
  o.out_dir = a.out;
  o.init_from = a.init_from;
  o.data = a.data;
  o.resume = a.resume;
  o.quiet = a.quiet;
  o.device = parse_device(a.device).str();
  if (a.steps) o.steps = *a.steps;
  if (a.batch_size) o.batch_size = *a.batch_size;
  if (a.save_every) o.save_every = *a.save_every;
  if (a.keep_last) o.keep_last = *a.keep_last;
  if (a.workers) o.workers = *a.workers;
  if (a.update_freq) o.update_freq = *a.update_freq;
  if (a.log_every) o.log_every = *a.log_every;
  if (a.seed) o.seed = *a.seed;
  if (a.lr) o.optimization.schedule.lr = *a.lr;
  if (a.warmup) o.optimization.schedule.warmup_updates = *a.warmup;
  if (!a.precision.empty()) o.precision = a.precision;
  if (a.official_vit_checkpoint) o.stage_options.official_vit_checkpoint = true;
  if (a.gradient_checkpointing) o.stage_options.gradient_checkpointing = true;
  if (a.sample_every > 0 && !a.sample_prompts.empty()) {
    if (o.stage != data::StageKind::Instruct) fail("train", "--sample-every writes images, which only the instruct stage can make");
    o.sample_every = a.sample_every;
    o.on_sample = [&a](int64_t update) { write_samples(a, update); };
  }
  o.launch = train::LaunchInfo::from_environment();
  o.distributed.backend = a.dist_backend;
  if (!(a.dist_timeout_s > 0 && a.dist_timeout_s <= 7 * 24 * 3600))
    fail("train", "--dist-timeout " + std::to_string(a.dist_timeout_s) + " must be a number of seconds in (0, 604800]");
  o.distributed.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.dist_timeout_s * 1000));
  if (!(a.dist_bucket_mb > 0 && a.dist_bucket_mb <= 4096))
    fail("train", "--dist-bucket-mb " + std::to_string(a.dist_bucket_mb) + " must be in (0, 4096]");
  o.distributed.bucket_bytes = std::max<int64_t>(1, static_cast<int64_t>(a.dist_bucket_mb * (1 << 20)));
  train::run_training(o);
  return 0;
}

}  // namespace

Command add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  auto* sub = app.add_subcommand("train", "Train one stage: Kosmos-G's lm (multimodal language modelling), align (AlignerNet), instruct (score distillation), or the diffusion decoder's vae (AutoencoderKL) and t2i (UNet with a CLIP text encoder)");
  sub->add_option("--stage", a->stage, "lm, align, instruct, vae or t2i")->required()->check(CLI::IsMember({"lm", "align", "instruct", "vae", "t2i"}));
  sub->add_option("--model", a->model, "Starting model folder (kosmosg convert output, a previous stage's --out, or for vae/t2i a diffusers folder, whose components without weights start from a seeded draw)")->required();
  sub->add_option("--data", a->data, "A data source, [KIND:]PATH[:WEIGHT]: a .jsonl manifest or an official TSV folder (laion, instructpix2pix, openimages); repeat to mix (each batch comes from one source drawn by weight)")->required()->type_name("SOURCE");
  sub->add_option("--out", a->out, "Output folder: a model folder plus checkpoints/ and metrics.jsonl")->required();
  sub->add_option("--config", a->config, "Training config JSON overriding configs/train/<stage>.json");
  sub->add_option("--init-from", a->init_from, "Take the kosmosg/ weights from a previous stage's output (update count starts at 0)");
  sub->add_flag("--resume", a->resume, "Continue the run in --out from its latest checkpoint, exactly");
  sub->add_option("--steps", a->steps, "Updates to reach (default: max_update of the config)");
  sub->add_option("--batch-size", a->batch_size, "Samples per batch (default from the config)");
  sub->add_option("--update-freq", a->update_freq, "Batches accumulated per update");
  sub->add_option("--save-every", a->save_every, "Write a checkpoint every K updates (and always at the end)");
  sub->add_option("--keep-last", a->keep_last, "Checkpoints to keep");
  sub->add_option("--workers", a->workers, "Threads that read and preprocess data ahead");
  sub->add_option("--log-every", a->log_every, "Print a progress line every K updates");
  sub->add_option("--seed", a->seed, "Seed of the data order and every random draw");
  sub->add_option("--lr", a->lr, "Peak learning rate");
  sub->add_option("--warmup", a->warmup, "Warm-up updates");
  sub->add_flag("--official-vit-checkpoint", a->official_vit_checkpoint, "instruct: reproduce the official run, whose checkpointed last ViT block gets no gradient (only weight decay moves it)");
  sub->add_flag("--gradient-checkpointing", a->gradient_checkpointing, "Recompute the MLLM, ViT, aligner and UNet blocks during backward: less memory, about a third more time");
  sub->add_option("--precision", a->precision, "float32, bfloat16 (autocast on CPU or CUDA) or float16 (CUDA, with the dynamic loss scaler): trainable weights stay float32; memory-efficient-bf16 or memory-efficient-fp16 (CUDA, loss scaler): every weight in half precision, Adam in float32, as the official runs (default from the config)");
  sub->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  sub->add_option("--threads", a->threads, "CPU threads (0 = all cores)")->capture_default_str();
  auto* every = sub->add_option("--sample-every", a->sample_every, "instruct: write sample images to OUT/samples every K updates");
  sub->add_option("--sample-prompt", a->sample_prompts, "A prompt for the sample images (repeat); each <i> takes the next --sample-image")->needs(every);
  sub->add_option("--sample-image", a->sample_images, "An image for the sample prompts' <i> slots, in order (repeat)");
  sub->add_option("--sample-steps", a->sample_steps, "Sampler steps of the sample images")->capture_default_str();
  sub->add_option("--dist-backend", a->dist_backend, "Data-parallel backend: gloo (CPU) or nccl (CUDA); default: follows --device. Ranks come from torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), Slurm or Open MPI; see scripts/launch.sh")->check(CLI::IsMember({"gloo", "nccl"}));
  sub->add_option("--dist-timeout", a->dist_timeout_s, "Seconds after which a rendezvous that cannot complete, or a rank that died or hangs, stops every rank with an error naming it")->capture_default_str();
  sub->add_option("--dist-bucket-mb", a->dist_bucket_mb, "Size of the gradient buckets all-reduced while backward runs (DDP's bucket_cap_mb)")->capture_default_str();
  sub->add_flag("--quiet", a->quiet, "No table or progress lines");
  return {sub, [a] { return run_train(*a); },
          {{"threads", "--threads"},
           {"steps", "--sample-steps"},
           {"updates", "--steps"},
           {"resume", "--resume"},
           {"output folder", "--out"},
           {"data source", "--data"},
           {"batch size", "--batch-size"},
           {"model folder", "--model"},
           {"init-from folder", "--init-from"},
           {"distributed backend", "--dist-backend"},
           {"distributed timeout", "--dist-timeout"}}};
}

}  // namespace kosmosg::cli
