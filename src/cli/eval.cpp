#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "cli/commands.h"
#include "kosmosg/error.h"
#include "kosmosg/eval/dreambench.h"
#include "kosmosg/eval/shapes.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/pipeline/kosmosg.h"
#include "kosmosg/pipeline/pipeline.h"
#include "kosmosg/pipeline/stable_diffusion.h"
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
  std::optional<pipeline::Pipeline> pipe;  // loaded on the first image that is missing
  auto generate = [&](const std::string& prompt, const std::string& reference, int64_t count, uint64_t seed) {
    if (!pipe) {
      pipe = pipeline::Pipeline::from_folder(a.model);
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

namespace fs = std::filesystem;

struct ShapesEvalArgs {
  std::string data, model, images, out = "shapes-eval", device = "cpu", dtype = "auto";
  bool ground_truth = false, quiet = false, baseline = false, no_baseline = false, conditions = false;
  // Unset ones come from the model folder's generation.json, else the library's defaults.
  std::optional<std::string> sampler;
  std::optional<int64_t> limit, size, steps;
  std::optional<double> guidance;
  int64_t batch = 16;
  uint64_t seed = 0;
  int threads = 0;
};

// Where a system's image for a case is written, and read back by --images: DIR/<split>/<n>.png.
std::string case_image_path(const std::string& dir, const eval::ShapesCase& c) {
  char name[32];
  std::snprintf(name, sizeof name, "%06lld.png", static_cast<long long>(c.index));
  return (fs::path(dir) / c.split / name).string();
}

// Makes the images of several cases at once (their seeds given), in order.
using BatchGenerateFn = std::function<std::vector<at::Tensor>(const std::vector<const eval::ShapesCase*>&,
                                                              const std::vector<uint64_t>&)>;

// Generates every case into OUT/<system>/, --batch cases at a time: score_shapes asks for the cases
// in order, so the first request of a batch makes it and the rest are served from memory.
eval::ShapesImageFn generating(const ShapesEvalArgs& a, const std::string& system,
                               const std::vector<eval::ShapesCase>& cases, const BatchGenerateFn& generate) {
  auto made = std::make_shared<std::map<size_t, std::pair<at::Tensor, std::string>>>();
  return [&a, &cases, system, generate, made](const eval::ShapesCase& c) {
    size_t pos = 0;
    while (pos < cases.size() && !(cases[pos].split == c.split && cases[pos].index == c.index)) ++pos;
    if (pos == cases.size()) fail("shapes eval", "a case outside the evaluated list was asked for");
    if (!made->count(pos)) {
      made->clear();
      std::vector<const eval::ShapesCase*> group;
      std::vector<uint64_t> seeds;
      for (size_t i = pos; i < cases.size() && static_cast<int64_t>(group.size()) < a.batch; ++i) {
        group.push_back(&cases[i]);
        seeds.push_back(a.seed + static_cast<uint64_t>(cases[i].index));
      }
      const auto images = generate(group, seeds);
      for (size_t k = 0; k < group.size(); ++k) {
        const auto& g = *group[k];
        const std::string path = case_image_path((fs::path(a.out) / system).string(), g);
        fs::create_directories(fs::path(path).parent_path());
        io::write_png(path, images[k],
                      {{"prompt", system == "baseline" ? g.words : g.prompt}, {"seed", std::to_string(seeds[k])}});
        (*made)[pos + k] = {images[k], path};
      }
    }
    return made->at(pos);
  };
}

pipeline::GenerateOptions generate_options(const pipeline::SamplingOptions& sampling, int64_t side, uint64_t seed) {
  pipeline::GenerateOptions g;
  g.sampling = sampling;
  g.width = g.height = side;
  g.seed = seed;
  return g;
}

int run_shapes(const ShapesEvalArgs& a) {
  const int modes = int(!a.model.empty()) + int(!a.images.empty()) + int(a.ground_truth);
  if (modes != 1)
    fail("shapes eval", "give one of --model (generate and score), --images (score a folder) or --ground-truth");
  const auto world = data::ShapesWorld::load(a.data);
  const auto cases = eval::read_shapes_cases(a.data, a.limit);
  nlohmann::json settings{{"data", a.data}, {"cases", cases.size()}};
  std::vector<std::pair<std::string, std::vector<eval::ShapesCaseScore>>> systems;
  const bool progress = !a.quiet;

  if (a.ground_truth) {
    settings["mode"] = "ground-truth";
    systems.emplace_back("ground-truth", eval::score_shapes(cases, world, [](const eval::ShapesCase& c) {
      return std::pair{io::read_image(c.target), c.target};
    }));
  } else if (!a.images.empty()) {
    settings["mode"] = "images";
    settings["images"] = a.images;
    systems.emplace_back("images", eval::score_shapes(cases, world, [&a](const eval::ShapesCase& c) {
      const std::string path = case_image_path(a.images, c);
      if (!fs::exists(path))
        fail("shapes eval", "--images: " + path + " does not exist (expected the kosmosg/ or baseline/ folder of an "
                            "earlier run with at least as many prompts; --limit scores fewer)");
      return std::pair{io::read_image(path), path};
    }));
  } else if (a.conditions) {
    for (const char* part : {"kosmosg", "text_encoder", "tokenizer"})
      if (!fs::exists(fs::path(a.model) / part))
        fail("shapes eval", "--conditions compares Kosmos-G's conditions with its text encoder's: " + a.model +
                                " has no " + part + "/ folder");
    configure_threads(a.threads);
    settings.update({{"mode", "conditions"}, {"model", a.model}});
    auto kosmosg = pipeline::KosmosGConditionEncoder::from_folder(a.model);
    auto text = pipeline::CLIPTextConditionEncoder::from_folder(a.model);
    systems.emplace_back(
        "conditions",
        eval::score_shapes_conditions(
            cases, world,
            [&](const eval::ShapesCase& c) {
              std::vector<at::Tensor> images;
              for (const auto& path : c.images) images.push_back(io::read_image(path));
              return kosmosg->encode(c.prompt, images, "", false).conditional;
            },
            [&](const std::string& caption) { return text->encode_prompt(caption); }, progress));
  } else {
    const auto device = parse_device(a.device);
    const auto dtype = parse_dtype(a.dtype, device);
    configure_threads(a.threads);
    keep_freed_memory();
    // A folder without kosmosg/ is a text-to-image decoder (the t2i stage's output): only the
    // baseline is scored.
    const bool kosmosg = fs::exists(fs::path(a.model) / "kosmosg");
    const bool baseline = !kosmosg || a.baseline ||
                          (!a.no_baseline && fs::exists(fs::path(a.model) / "text_encoder") &&
                           fs::exists(fs::path(a.model) / "model_index.json"));
    if (!kosmosg && a.no_baseline)
      fail("shapes eval", a.model + " has no kosmosg/ folder, so only its text-to-image baseline can be scored: drop --no-baseline");
    const auto defaults = pipeline::read_generation_defaults(a.model);
    const pipeline::SamplingOptions sampling = defaults.sampling(a.sampler, a.steps, a.guidance);
    settings.update({{"mode", "model"}, {"model", a.model}, {"sampler", sampling.sampler}, {"steps", sampling.steps},
                     {"guidance", sampling.guidance}, {"seed", a.seed}, {"baseline", baseline}});
    // Both systems share the decoder: the baseline only swaps the condition encoder.
    auto decoder = pipeline::DiffusionDecoder::from_folder(a.model);
    const int64_t side = a.size.value_or(defaults.size ? defaults.size->first : decoder.native_size());
    settings["size"] = side;
    auto batch_options = [&](const std::vector<const eval::ShapesCase*>& group, const std::vector<uint64_t>& seeds,
                             bool words) {
      std::vector<pipeline::GenerateOptions> options;
      for (size_t k = 0; k < group.size(); ++k) {
        auto g = generate_options(sampling, side, seeds[k]);
        g.prompt = words ? group[k]->words : group[k]->prompt;
        if (!words)
          for (const auto& path : group[k]->images) g.images.push_back(io::read_image(path));
        options.push_back(std::move(g));
      }
      return options;
    };
    auto generate_with = [&](pipeline::Pipeline& pipe, bool words) -> BatchGenerateFn {
      return [&pipe, &batch_options, words](const std::vector<const eval::ShapesCase*>& group,
                                           const std::vector<uint64_t>& seeds) {
        return pipeline::to_uint8_images(pipe.generate_batch(batch_options(group, seeds, words))).unbind(0);
      };
    };
    settings["batch"] = a.batch;
    if (kosmosg) {
      pipeline::Pipeline pipe(decoder, pipeline::KosmosGConditionEncoder::from_folder(a.model));
      pipe.to(device, dtype);
      spdlog::info("kosmosg: {} prompts at {}x{}, {} steps", cases.size(), side, side, sampling.steps);
      systems.emplace_back("kosmosg", eval::score_shapes(cases, world, generating(a, "kosmosg", cases,
                                                                                 generate_with(pipe, false)),
                                                        progress));
    }
    if (baseline) {
      pipeline::Pipeline pipe(decoder, pipeline::CLIPTextConditionEncoder::from_folder(a.model));
      pipe.to(device, dtype);
      spdlog::info("baseline (the text-to-image decoder, entities in words): {} prompts", cases.size());
      systems.emplace_back("baseline", eval::score_shapes(cases, world, generating(a, "baseline", cases,
                                                                                  generate_with(pipe, true)),
                                                         progress));
    }
  }

  for (const auto& [system, scored] : systems)
    std::printf("%s\n", eval::format_shapes_table(system, eval::tally_shapes(scored)).c_str());
  fs::create_directories(a.out);
  const std::string report = (fs::path(a.out) / "report.json").string();
  io::write_text_atomically(report, eval::shapes_report_json(systems, settings.dump()));
  std::printf("report: %s\n", report.c_str());
  return 0;
}

}  // namespace

Command add_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto s = std::make_shared<ShapesEvalArgs>();
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

  auto* sh = sub->add_subcommand(
      "shapes", "The shapes world's held-out prompts (kosmosg data shapes): generate an image for each and score "
                "text fidelity (the background asked for), subject fidelity (the entities' kinds and colours) and "
                "editing success for text-only, one-entity and two-entity prompts, by image analysis");
  sh->add_option("--data", s->data, "The world folder (kosmosg data shapes --out)")->required();
  auto* model = sh->add_option("--model", s->model, "Kosmos-G model folder to generate with (a text-to-image folder without kosmosg/, e.g. the t2i stage's output: its baseline alone)");
  auto* images = sh->add_option("--images", s->images, "Score the images of an earlier run instead (OUT/kosmosg or "
                                                       "OUT/baseline: <split>/<n>.png)")->excludes(model);
  sh->add_flag("--ground-truth", s->ground_truth, "Score the world's own target images (the scorer's check: 100%)")
      ->excludes(model)->excludes(images);
  auto* baseline = sh->add_flag("--baseline", s->baseline,
                                "Also score the text-to-image decoder alone, each <i> replaced by the entity in words "
                                "(the default when the model folder has text_encoder/ and model_index.json)");
  sh->add_flag("--no-baseline", s->no_baseline, "Score the Kosmos-G model only")->excludes(baseline);
  sh->add_flag("--conditions", s->conditions,
               "With --model, score Kosmos-G's conditions instead of images, in seconds: each prompt reads as the "
               "caption whose text-encoder condition is nearest (any Kosmos-G folder from the align stage on)")
      ->needs(model)
      ->excludes(baseline);
  sh->add_option("--out", s->out, "Output folder: kosmosg/ and baseline/ images, report.json")->capture_default_str();
  sh->add_option("--limit", s->limit, "Only the first N prompts of each test manifest");
  sh->add_option("--steps", s->steps, "Sampler steps (default: the model's generation.json, else 25)");
  sh->add_option("--guidance", s->guidance, "Guidance scale (default: the model's generation.json, else 7.5)");
  sh->add_option("--sampler", s->sampler, "Sampler (default: the model's generation.json, else dpmpp-2m)");
  sh->add_option("--seed", s->seed, "Seed of a manifest's first prompt; prompt n uses seed+n")->capture_default_str();
  sh->add_option("--size", s->size, "Image side in pixels (default: the model's generation.json, else the UNet's own size)");
  sh->add_option("--batch", s->batch, "Prompts sampled together (the same images as one at a time, faster)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sh->add_option("--threads", s->threads, "CPU threads (0 = all cores)")->capture_default_str();
  sh->add_option("--device", s->device, "cpu, cuda or cuda:N")->capture_default_str();
  sh->add_option("--dtype", s->dtype, "auto, float32, float16 or bfloat16")->capture_default_str();
  sh->add_flag("--quiet", s->quiet, "No progress output");
  return {sub,
          [a, s, db] { return db->parsed() ? run_dreambench(*a) : run_shapes(*s); },
          {{"steps", "--steps"}, {"guidance", "--guidance"}, {"sampler", "--sampler"}, {"threads", "--threads"}}};
}

}  // namespace kosmosg::cli
