#include <spdlog/spdlog.h>

#include <memory>

#include "cli/commands.h"
#include "kosmosg/eval/dreambench.h"
#include "kosmosg/io/image.h"
#include "kosmosg/pipeline/kosmosg.h"
#include "kosmosg/runtime.h"

namespace kosmosg::cli {
namespace {

struct EvalArgs {
  eval::DreamBenchOptions bench;
  std::string model, device = "cpu", dtype = "auto";
  int64_t steps = 100, size = 512;
  double guidance = 7.5;
  int threads = 0;
  bool quiet = false;
};

int run_dreambench(EvalArgs& a) {
  const auto device = parse_device(a.device);
  const auto dtype = parse_dtype(a.dtype, device);
  configure_threads(a.threads);
  a.bench.show_progress = !a.quiet;
  std::optional<pipeline::KosmosGPipeline> pipe;  // loaded on the first image that is missing
  auto generate = [&](const std::string& prompt, const std::string& reference, int64_t count, uint64_t seed) {
    if (!pipe) {
      pipe = pipeline::KosmosGPipeline::from_folder(a.model);
      pipe->to(device, dtype);
    }
    pipeline::GenerateOptions options;
    options.prompt = prompt;
    options.images = {io::read_image(reference)};
    options.sampling = {"dpmpp-2m", a.steps, a.guidance, false};
    options.width = options.height = a.size;
    std::vector<at::Tensor> images;
    for (int64_t k = 0; k < count; ++k) {
      options.seed = seed + static_cast<uint64_t>(k);
      images.push_back(pipeline::to_uint8_images(pipe->generate(options).second)[0]);
    }
    return images;
  };
  const auto result = eval::run_dreambench(a.bench, generate);
  std::printf("images: %zu (%lld generated, %lld reused)\n", result.images.size(),
              static_cast<long long>(result.generated), static_cast<long long>(result.reused));
  std::printf("DINO: %.3f\nCLIP-I: %.3f\nCLIP-T: %.3f\n", result.dino, result.clip_i, result.clip_t);
  return 0;
}

}  // namespace

Command add_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* sub = app.add_subcommand("eval", "Evaluate a model");
  sub->require_subcommand(1);
  auto* db = sub->add_subcommand(
      "dreambench", "DreamBench as the official eval/ runs it: generate for every subject and prompt "
                    "(resumable), then DINO, CLIP-I and CLIP-T");
  db->add_option("--model", a->model, "Kosmos-G model folder")->required();
  db->add_option("--data", a->bench.data_dir, "The DreamBooth dataset folder (<subject>/<image>.jpg)")->required();
  db->add_option("--clip", a->bench.clip_dir, "Hugging Face CLIP folder (e.g. clip-vit-base-patch32, safetensors)")->required();
  db->add_option("--dino", a->bench.dino_weights, "DINO ViT-S/16 weights (safetensors of the dino_vits16 state dict)")->required();
  db->add_option("--dino-config", a->bench.dino_config, "JSON of DINO ViT sizes (default: ViT-S/16)");
  db->add_option("--out", a->bench.output_dir, "Output folder (images, scores.jsonl, summary.json)")->required();
  db->add_option("--spec", a->bench.spec_path, "Benchmark definition JSON (default: the official one, built in)");
  db->add_option("--images-per-prompt", a->bench.images_per_prompt, "Images per prompt")->capture_default_str();
  db->add_option("--seed", a->bench.seed, "Seed of each prompt's batch; image k uses seed+k")->capture_default_str();
  db->add_option("--subjects", a->bench.subjects, "Only these subjects")->delimiter(',');
  db->add_option("--max-prompts", a->bench.max_prompts, "Only each subject's first N prompts");
  db->add_option("--steps", a->steps, "DPM-Solver++ steps (official: 100)")->capture_default_str();
  db->add_option("--guidance", a->guidance, "Guidance scale")->capture_default_str();
  db->add_option("--size", a->size, "Image side in pixels")->capture_default_str();
  db->add_option("--threads", a->threads, "CPU threads (0 = all cores)")->capture_default_str();
  db->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  db->add_option("--dtype", a->dtype, "auto, float32, float16 or bfloat16")->capture_default_str();
  db->add_flag("--quiet", a->quiet, "No progress output");
  return {db, [a] { return run_dreambench(*a); }};
}

}  // namespace kosmosg::cli
