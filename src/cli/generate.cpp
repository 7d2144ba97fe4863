#include <spdlog/spdlog.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <filesystem>
#include <memory>
#include <random>

#include "cli/commands.h"
#include "kosmosg/error.h"
#include "kosmosg/io/control_image.h"
#include "kosmosg/io/image.h"
#include "kosmosg/models/controlnet.h"
#include "kosmosg/models/lora.h"
#include "kosmosg/pipeline/pipeline.h"
#include "kosmosg/runtime.h"

namespace kosmosg::cli {
namespace {

namespace fs = std::filesystem;

// One run writes at most this many images: a typo in --num-images must not fill the disk.
constexpr int64_t kMaxImagesPerRun = 1000;

struct GenerateArgs {
  std::string model, prompt, out = "out.png";
  // Unset ones come from the model folder's generation.json, else the library's defaults.
  std::optional<std::string> negative, sampler, size;
  std::optional<int64_t> steps;
  std::optional<double> guidance;
  std::vector<std::string> images, loras;
  bool lora_merge = false, save_control_maps = false;
  std::string init_image;
  double strength = 0.8;
  std::vector<std::string> controlnets, control_images, control_preprocess;
  std::vector<double> control_scales, control_starts, control_ends;
  std::string device = "cpu", dtype = "auto", storage_dtype = "float32";
  int64_t num_images = 1;
  std::optional<std::string> seed;
  int threads = 0;
  bool quiet = false;
  bool no_cuda_graph = false;
};

struct LoraArg {
  std::string path;
  double scale = 1.0;
};

// FILE[:SCALE]; a suffix after the last ':' that is not a number belongs to the file name when a
// file has that whole name.
LoraArg parse_lora_arg(const std::string& text) {
  if (text.empty()) fail("lora", "--lora needs a file (FILE or FILE:SCALE)");
  const auto colon = text.rfind(':');
  if (colon != std::string::npos && colon + 1 < text.size()) {
    const std::string tail = text.substr(colon + 1);
    char* end = nullptr;
    const double scale = std::strtod(tail.c_str(), &end);
    if (end && *end == '\0' && std::isfinite(scale)) return {text.substr(0, colon), scale};
    std::error_code ec;
    if (!fs::exists(text, ec))
      fail("lora", "--lora " + text + ": the scale '" + tail + "' is not a finite number, and no file is named " +
                       text + " (expected FILE or FILE:SCALE)");
  }
  return {text, 1.0};
}

// A seed as digits, 0 to 2^64 - 1: CLI11 would wrap "-1" around to the top seed.
uint64_t parse_seed(const std::string& text) {
  uint64_t seed = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), seed);
  if (text.empty() || error != std::errc() || end != text.data() + text.size())
    fail("seed", "--seed '" + text + "' is not a whole number from 0 to " + std::to_string(UINT64_MAX));
  return seed;
}

// One value per ControlNet from a repeated option: none (the default for all), one (for all) or
// one each.
template <typename T>
std::vector<T> per_controlnet(const std::vector<T>& given, size_t count, const T& fallback,
                              const std::string& option) {
  if (given.empty()) return std::vector<T>(count, fallback);
  if (given.size() == 1) return std::vector<T>(count, given[0]);
  if (given.size() != count)
    fail(option, "--" + option + " is given " + std::to_string(given.size()) + " times for " +
                     std::to_string(count) + " --controlnet; give it once (for all) or once per ControlNet");
  return given;
}

// Numbered names for several images: out.png → out_0.png, out_1.png, ...
std::string output_path(const std::string& out, int64_t index, int64_t count) {
  if (count == 1) return out;
  fs::path p(out);
  return (p.parent_path() / (p.stem().string() + "_" + std::to_string(index) + p.extension().string())).string();
}

void check_output(const std::string& out) {
  fs::path p(out);
  if (p.extension() != ".png") fail("out", "--out " + out + " must end in .png");
  fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  if (!fs::is_directory(dir)) fail("out", "the folder of --out " + out + " does not exist");
  if (::access(dir.c_str(), W_OK) != 0) fail("out", "the folder of --out " + out + " is not writable");
}

// One ControlNet as the command line gives it.
struct ControlSpec {
  std::string dir, image, preprocess_spec;
  io::ControlPreprocess preprocess;
  double scale, start, end;
};

// What a parsed command line asks for: the images to make, with everything read that can be read
// before the model loads, so that a bad file fails fast.
struct GenerateJob {
  pipeline::GenerateOptions options;  // all but the size, the seed and the pictures
  std::optional<std::pair<int64_t, int64_t>> size, default_size;  // given; the model folder's
  // The settings generation.json supplied, for errors about their values: "the file's steps".
  std::map<std::string, std::string> from_file;
  std::optional<std::pair<int64_t, int64_t>> picture_size;  // of the picture that sets the size
  std::vector<std::pair<LoraArg, models::LoraWeights>> loras;
  std::vector<ControlSpec> controls;
  c10::Device device = c10::kCPU;
  c10::ScalarType dtype = c10::kFloat;
  c10::ScalarType storage_dtype = c10::kFloat;  // of the models' large blocks (see Pipeline::from_folder)
  int threads = 0;
  uint64_t seed = 0;
};

GenerateJob parse(const GenerateArgs& a) {
  GenerateJob job;
  if (a.num_images < 1 || a.num_images > kMaxImagesPerRun)
    fail("num-images", "--num-images must be from 1 to " + std::to_string(kMaxImagesPerRun) + ", got " +
                           std::to_string(a.num_images) + " (run again with another --seed for more)");
  const auto defaults = pipeline::read_generation_defaults(a.model);
  auto& o = job.options;
  o.prompt = a.prompt;
  o.negative = a.negative.value_or(defaults.negative.value_or(o.negative));
  o.sampling = defaults.sampling(a.sampler, a.steps, a.guidance);
  o.sampling.show_progress = !a.quiet;
  o.sampling.cuda_graph = !a.no_cuda_graph;
  o.strength = a.strength;
  if (a.size) job.size = pipeline::parse_image_size(*a.size);
  job.default_size = defaults.size;
  const std::string file = (fs::path(a.model) / "generation.json").string();
  if (!a.steps && defaults.steps) job.from_file["steps"] = file + "'s steps";
  if (!a.guidance && defaults.guidance) job.from_file["guidance"] = file + "'s guidance";
  if (!a.sampler && defaults.sampler) job.from_file["sampler"] = file + "'s sampler";
  check_output(a.out);
  job.device = parse_device(a.device);
  job.dtype = parse_dtype(a.dtype, job.device);
  job.storage_dtype = parse_storage_dtype(a.storage_dtype, job.device, job.dtype);
  job.threads = configure_threads(a.threads);
  job.seed = a.seed ? parse_seed(*a.seed) : std::random_device{}();
  // Image i uses seed + i, which must not wrap around to 0.
  if (job.seed > UINT64_MAX - static_cast<uint64_t>(a.num_images - 1))
    fail("seed", "--seed " + std::to_string(job.seed) + " with --num-images " + std::to_string(a.num_images) +
                     " runs past the largest seed " + std::to_string(UINT64_MAX));
  for (const auto& path : a.images) o.images.push_back(io::read_image(path));
  // The init and control pictures are decoded once the output size is checked, as without --size
  // the first of them sets it: a huge picture is refused from its header, before it is decoded.
  // Their headers are read now, so that a bad file still fails before the model loads.
  const std::string sized_by = !a.init_image.empty() ? a.init_image
                               : a.control_images.empty() ? std::string() : a.control_images[0];
  if (!sized_by.empty()) job.picture_size = io::read_image_size(sized_by);
  for (const auto& path : a.control_images) io::read_image_size(path);
  const size_t n_control = a.controlnets.size();
  if (a.control_images.size() != n_control)
    fail("control-image", "got " + std::to_string(a.control_images.size()) + " --control-image for " +
                              std::to_string(n_control) + " --controlnet; give one control image per ControlNet");
  const auto preprocess = per_controlnet<std::string>(a.control_preprocess, n_control, "none", "control-preprocess");
  const auto scales = per_controlnet(a.control_scales, n_control, 1.0, "control-scale");
  const auto starts = per_controlnet(a.control_starts, n_control, 0.0, "control-start");
  const auto ends = per_controlnet(a.control_ends, n_control, 1.0, "control-end");
  for (size_t k = 0; k < n_control; ++k)
    job.controls.push_back({a.controlnets[k], a.control_images[k], preprocess[k],
                            io::ControlPreprocess::parse(preprocess[k]), scales[k], starts[k], ends[k]});
  for (const auto& text : a.loras) {
    auto arg = parse_lora_arg(text);
    job.loras.emplace_back(arg, models::read_lora(arg.path));
  }
  return job;
}

// Loads the model and its add-ons and completes the job's options: the size, the pictures.
pipeline::Pipeline build(const GenerateArgs& a, GenerateJob& job) {
  const auto t0 = std::chrono::steady_clock::now();
  auto& o = job.options;
  for (const auto& c : job.controls) {
    pipeline::ControlNetGuide guide;
    guide.model = models::load_controlnet(c.dir);
    guide.scale = c.scale;
    guide.start = c.start;
    guide.end = c.end;
    guide.name = c.dir;
    o.controlnets.push_back(std::move(guide));
  }
  auto pipe = pipeline::Pipeline::from_folder(a.model, job.storage_dtype);
  if (job.storage_dtype == c10::kFloat) pipe.to(job.device, job.dtype);
  for (const auto& [arg, weights] : job.loras) {
    size_t skipped = 0;
    pipe.attach_lora(weights, arg.scale, &skipped);
    const bool text_encoder = pipe.encoder().text_encoder() != nullptr;
    spdlog::info("LoRA {} at scale {} ({} UNet{} layers)", arg.path, arg.scale, weights.unet.size(),
                 text_encoder ? " + " + std::to_string(weights.text_encoder.size()) + " text-encoder" : "");
    if (skipped > 0)
      spdlog::warn("{}: {} text-encoder layers skipped: a {} model has no CLIP text encoder "
                   "(its conditions come from the MLLM)", arg.path, skipped, pipe.encoder().kind());
  }
  if (a.lora_merge) pipe.merge_lora();

  const int64_t scale = pipe.decoder().vae_scale();
  const int64_t side = pipe.decoder().native_size();
  std::pair<int64_t, int64_t> size = job.default_size.value_or(std::pair{side, side});
  // As diffusers' img2img and ControlNet pipelines: the input picture's own size, rounded down to
  // the latent grid.
  if (job.picture_size) size = {job.picture_size->first / scale * scale, job.picture_size->second / scale * scale};
  std::tie(o.width, o.height) = job.size.value_or(size);
  // Before any picture is decoded (the library checks it again with the rest of the options).
  pipeline::check_image_size(o.width, o.height, scale);
  if (!a.init_image.empty()) o.init_image = io::read_image(a.init_image);
  for (size_t k = 0; k < job.controls.size(); ++k) {
    const auto& c = job.controls[k];
    auto& guide = o.controlnets[k];
    guide.model->to(job.device, job.dtype);
    // The control map is made at the output size, so edges keep their width.
    guide.image = io::preprocess_control_image(io::resize(io::read_image(c.image), o.width, o.height,
                                                          io::Resample::Lanczos), c.preprocess);
    if (a.save_control_maps) {
      fs::path out(a.out);
      const auto path = (out.parent_path() / (out.stem().string() + "_control" + std::to_string(k) + ".png")).string();
      io::write_png(path, guide.image, {{"controlnet", c.dir}, {"control_image", c.image},
                                        {"preprocess", c.preprocess_spec}, {"software", "kosmosg"}});
      spdlog::info("wrote the control map {}", path);
    }
  }
  spdlog::info("loaded {} ({}) in {:.1f} s; {} threads, device {}, {}", a.model, pipe.encoder().kind(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), job.threads,
               job.device.str(), c10::toString(job.dtype));
  return pipe;
}

// The PNG text chunk: the prompt, seed and settings that remake the image.
std::map<std::string, std::string> png_text(const GenerateArgs& a, const GenerateJob& job) {
  const auto& o = job.options;
  std::map<std::string, std::string> text{{"prompt", o.prompt},
                                          {"negative_prompt", o.negative},
                                          {"steps", std::to_string(o.sampling.steps)},
                                          {"guidance", c10::str(o.sampling.guidance)},
                                          {"sampler", o.sampling.sampler},
                                          {"size", std::to_string(o.width) + "x" + std::to_string(o.height)},
                                          {"model", fs::path(a.model).lexically_normal().string()},
                                          {"software", "kosmosg"}};
  std::string image_list;
  for (const auto& path : a.images) image_list += (image_list.empty() ? "" : "; ") + path;
  if (!image_list.empty()) text["images"] = image_list;
  for (size_t k = 0; k < job.loras.size(); ++k)
    text["lora" + (k ? std::to_string(k) : std::string())] =
        job.loras[k].first.path + ":" + c10::str(job.loras[k].first.scale);
  if (o.init_image) {
    text["init_image"] = a.init_image;
    text["strength"] = c10::str(o.strength);
  }
  for (size_t k = 0; k < job.controls.size(); ++k) {
    const auto& c = job.controls[k];
    text["controlnet" + (k ? std::to_string(k) : std::string())] =
        c.dir + " image=" + c.image + " preprocess=" + c.preprocess_spec + " scale=" + c10::str(c.scale) +
        " window=" + c10::str(c.start) + "-" + c10::str(c.end);
  }
  return text;
}

int run_generate(const GenerateArgs& a) {
  GenerateJob job = parse(a);
  auto pipe = build(a, job);
  auto text = png_text(a, job);
  for (int64_t i = 0; i < a.num_images; ++i) {
    auto options = job.options;
    options.seed = job.seed + static_cast<uint64_t>(i);
    at::Tensor image;
    try {
      image = pipe.generate(options).second;
    } catch (const SettingError& e) {
      // A bad value from generation.json is the file's to fix, not an option's.
      const auto source = job.from_file.find(e.setting());
      if (source == job.from_file.end()) throw;
      throw e.renamed(source->second);
    }
    const std::string path = output_path(a.out, i, a.num_images);
    text["seed"] = std::to_string(options.seed);
    io::write_png(path, pipeline::to_uint8_images(image)[0], text);
    std::printf("%s\n", path.c_str());
    spdlog::info("wrote {} (seed {})", path, options.seed);
  }
  return 0;
}

}  // namespace

Command add_generate(CLI::App& app) {
  auto a = std::make_shared<GenerateArgs>();
  auto* sub = app.add_subcommand(
      "generate", "Generate images from a prompt, with a Kosmos-G folder (text and <i> images) or a Stable Diffusion folder");
  sub->add_option("--model", a->model, "Model folder: Kosmos-G (kosmosg convert) or diffusers Stable Diffusion 1.x")->required();
  sub->add_option("--prompt", a->prompt, "What to draw; with Kosmos-G each <i> stands for the next --image")->required();
  sub->add_option("--image", a->images, "An input image for the next <i> of the prompt (repeat in order; Kosmos-G only)");
  const pipeline::GenerateOptions library;  // the defaults a model folder's generation.json may replace
  sub->add_option("--negative", a->negative, "What to steer away from (the unconditional branch; default: empty)");
  sub->add_option("--steps", a->steps, "Sampler steps (default: " + std::to_string(library.sampling.steps) + ")");
  sub->add_option("--guidance", a->guidance, "Classifier-free guidance scale, 0 to 100 (<= 1 disables it; default: " +
                                                 c10::str(library.sampling.guidance) + ")");
  sub->add_option("--sampler", a->sampler, "ddim, dpmpp-2m, dpmpp-2m-karras, dpmpp-2m-sde, dpmpp-2m-sde-karras, euler, "
                                           "euler-a or pndm (default: " + library.sampling.sampler + ")");
  sub->add_option("--seed", a->seed, "Seed of the initial noise, 0 to 2^64-1; image i uses seed+i (default: random)");
  sub->add_option("--size", a->size, "WIDTHxHEIGHT in pixels, multiples of 8 (default: the model folder's generation.json, else the model's native size)");
  sub->footer("Defaults: a generation.json at the model folder's root, e.g. {\"size\": \"64x64\", \"steps\": 20, "
              "\"guidance\": 5.0, \"sampler\": \"dpmpp-2m\", \"negative\": \"\"} (every key optional), replaces the "
              "defaults of --size, --steps, --guidance, --sampler and --negative; options given here win.");
  sub->add_option("--num-images", a->num_images, "How many images (at most 1000)")->capture_default_str();
  sub->add_option("--out", a->out, "Output PNG; several images get _0, _1, ... before .png")->capture_default_str();
  sub->add_option("--threads", a->threads, "CPU threads, at most the number of cores (0 = all cores)")->capture_default_str();
  sub->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  sub->add_option("--dtype", a->dtype, "auto, float32, float16 or bfloat16")->capture_default_str();
  sub->add_option("--storage-dtype", a->storage_dtype, "float32, bfloat16 or float16: store the UNet's and the MLLM's, ViT's and aligner's blocks in half precision and compute them in float32, a block at a time (CPU; about 40% less memory for Kosmos-G)")->capture_default_str();
  auto* lora = sub->add_option("--lora", a->loras, "A LoRA .safetensors file (Kohya/A1111 or diffusers) with an optional strength, FILE[:SCALE] (default 1); repeat for several")->type_name("FILE[:SCALE]");
  sub->add_flag("--lora-merge", a->lora_merge, "Add the LoRA weights into the model once (faster sampling) instead of applying them alongside")->needs(lora);
  auto* init = sub->add_option("--init-image", a->init_image, "Image-to-image: start from this picture (default size: its own, rounded down to a multiple of 8)");
  sub->add_option("--strength", a->strength, "Image-to-image: share of the schedule to run, in (0, 1]; 1 ignores the picture's content")->capture_default_str()->needs(init);
  auto* controlnet = sub->add_option("--controlnet", a->controlnets, "A diffusers ControlNetModel folder; repeat for several (they add up)")->type_name("DIR");
  sub->add_option("--control-image", a->control_images, "The control image of each --controlnet, in order (default size: the first one's, rounded down to a multiple of 8)")->needs(controlnet)->type_name("IMG");
  sub->add_option("--control-preprocess", a->control_preprocess, "Make the control map from the picture first: none, canny[:LOW:HIGH] (default 100:200), scribble[:THRESHOLD] (default 32) or lineart; once for all or once per ControlNet")->needs(controlnet)->type_name("NAME");
  sub->add_flag("--save-control-map", a->save_control_maps, "Also write each ControlNet's control map (after preprocessing, at the output size) as <out>_control<K>.png")->needs(controlnet);
  sub->add_option("--control-scale", a->control_scales, "ControlNet conditioning scale (default 1); once for all or once per ControlNet")->needs(controlnet)->type_name("S");
  sub->add_option("--control-start", a->control_starts, "Share of the steps after which a ControlNet starts acting (default 0)")->needs(controlnet)->type_name("A");
  sub->add_option("--control-end", a->control_ends, "Share of the steps after which it stops (default 1)")->needs(controlnet)->type_name("B");
  sub->add_flag("--no-cuda-graph", a->no_cuda_graph, "On CUDA, launch the UNet's kernels one by one at every step instead of replaying them as one graph captured at the first");
  sub->add_flag("--quiet", a->quiet, "No progress output");
  return {sub,
          [a] { return run_generate(*a); },
          {{"steps", "--steps"}, {"guidance", "--guidance"}, {"sampler", "--sampler"}, {"strength", "--strength"},
           {"size", "--size"}, {"threads", "--threads"}}};
}

}  // namespace kosmosg::cli
