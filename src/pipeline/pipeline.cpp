#include "kosmosg/pipeline/pipeline.h"

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>

#include "kosmosg/diffusion/scheduler.h"
#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/models/lora.h"
#include "kosmosg/pipeline/kosmosg.h"
#include "kosmosg/pipeline/stable_diffusion.h"

namespace kosmosg::pipeline {

namespace fs = std::filesystem;

Pipeline::Pipeline(DiffusionDecoder decoder, std::unique_ptr<ConditionEncoder> encoder)
    : decoder_(std::move(decoder)), encoder_(std::move(encoder)) {
  if (!encoder_) fail("pipeline", "no condition encoder given");
}

bool Pipeline::is_kosmosg_folder(const std::string& dir) { return KosmosGConditionEncoder::is_kosmosg_folder(dir); }

Pipeline Pipeline::from_folder(const std::string& dir, c10::ScalarType block_storage) {
  const fs::path root(dir);
  if (!fs::is_directory(root))
    fail("model", dir + " is not a folder (expected a Kosmos-G or diffusers Stable Diffusion model folder)");
  const bool store = block_storage != c10::kFloat;
  if (is_kosmosg_folder(dir)) {
    auto encoder = KosmosGConditionEncoder::from_folder(dir);
    if (store) encoder->store_block_weights(block_storage);
    auto decoder = DiffusionDecoder::from_folder(dir);
    if (store) decoder.store_block_weights(block_storage);
    return Pipeline(std::move(decoder), std::move(encoder));
  }
  if (!fs::exists(root / "model_index.json"))
    fail("model", dir + " has no model_index.json and no kosmosg/ (expected a diffusers or Kosmos-G model folder)");
  for (const char* part : {"unet", "vae", "text_encoder", "tokenizer", "scheduler"})
    if (!fs::is_directory(root / part))
      fail("model", dir + " has no " + part + "/ folder (a Stable Diffusion folder needs unet, vae, "
                          "text_encoder, tokenizer and scheduler)");
  auto decoder = DiffusionDecoder::from_folder(dir);
  if (store) decoder.store_block_weights(block_storage);
  return Pipeline(std::move(decoder), CLIPTextConditionEncoder::from_folder(dir));
}

std::pair<at::Tensor, at::Tensor> Pipeline::generate(const GenerateOptions& options, const StepCallback& on_step) {
  // The options first: a bad setting must not cost an encoder run.
  auto scheduler = decoder_.prepare(options);
  const Conditions conditions =
      encoder_->encode(options.prompt, options.images, options.negative, options.sampling.guidance > 1.0);
  return decoder_.run(*scheduler, conditions.batch(), options, on_step);
}

at::Tensor Pipeline::generate_batch(const std::vector<GenerateOptions>& batch) {
  if (batch.empty()) fail("generate", "generate_batch was given no images to make");
  const GenerateOptions& first = batch.front();
  auto scheduler = decoder_.prepare(first);
  for (const auto& options : batch) {
    if (options.init_image || options.initial_latents || !options.controlnets.empty())
      fail("generate", "generate_batch takes text-to-image options only (no init image, initial latents or "
                       "ControlNet); use generate for those");
    if (options.width != first.width || options.height != first.height ||
        options.sampling.sampler != first.sampling.sampler || options.sampling.steps != first.sampling.steps ||
        options.sampling.guidance != first.sampling.guidance || options.negative != first.negative)
      fail("generate", "the images of one generate_batch must share the size, sampler, steps, guidance and "
                       "negative prompt");
  }
  const bool guided = first.sampling.guidance > 1.0;
  std::vector<at::Tensor> conditional, unconditional, noise;
  // Each image's generator draws its initial noise and then its step noise, as in generate().
  std::vector<at::Generator> generators;
  for (const auto& options : batch) {
    const Conditions c = encoder_->encode(options.prompt, options.images, options.negative, guided);
    conditional.push_back(c.conditional);
    if (guided) unconditional.push_back(c.unconditional);
    generators.push_back(at::make_generator<at::CPUGeneratorImpl>(options.seed));
    noise.push_back(decoder_.initial_latents(1, options.height, options.width, generators.back()));
  }
  const at::Tensor condition =
      guided ? at::cat({at::cat(unconditional), at::cat(conditional)}) : at::cat(conditional);
  const at::Tensor latents = decoder_.denoise(*scheduler, at::cat(noise) * scheduler->init_noise_sigma(), 0,
                                              condition, first.sampling, generators, {}, {});
  return decoder_.decode(latents);
}

std::shared_ptr<double> Pipeline::attach_lora(const models::LoraWeights& lora, double strength, size_t* skipped) {
  return models::attach_lora(lora, *decoder_.unet(), encoder_->text_encoder(), strength, skipped);
}

void Pipeline::merge_lora() {
  models::merge_lora(*decoder_.unet());
  if (auto* text_encoder = encoder_->text_encoder()) models::merge_lora(*text_encoder);
}

void Pipeline::to(const c10::Device& device, c10::ScalarType dtype) {
  decoder_.to(device, dtype);
  encoder_->to(device, dtype);
}

std::pair<int64_t, int64_t> parse_image_size(const std::string& text) {
  const auto x = text.find_first_of("xX");
  try {
    if (x != std::string::npos) {
      size_t used_w = 0, used_h = 0;
      const int64_t w = std::stoll(text.substr(0, x), &used_w);
      const int64_t h = std::stoll(text.substr(x + 1), &used_h);
      if (used_w == x && used_h == text.size() - x - 1) return {w, h};
    }
  } catch (const std::exception&) {
  }
  fail_setting("size", "size", "{} '" + text + "' is not WIDTHxHEIGHT (e.g. 512x512)");
}

namespace {

// generation.json's `key` when present: a value of another kind (`expected`) is an error naming the
// file and the key.
template <typename T>
std::optional<T> generation_entry(const io::Json& json, const std::string& key, const std::string& file,
                                  const char* expected) {
  const auto it = json.find(key);
  if (it == json.end()) return std::nullopt;
  T out{};
  const bool kind_ok = std::is_same_v<T, std::string> ? it->is_string() : it->is_number();
  if (!kind_ok || !io::detail::convert(*it, out))
    fail("generation.json", file + ": key '" + key + "' has the value " + io::brief(*it) + " (expected " +
                                expected + ")");
  return out;
}

}  // namespace

GenerationDefaults read_generation_defaults(const std::string& model_dir) {
  const fs::path path = fs::path(model_dir) / "generation.json";
  GenerationDefaults d;
  if (!fs::exists(path)) return d;
  const std::string file = path.string();
  const io::Json json = io::read_json(file);
  if (!json.is_object()) fail("generation.json", file + " must hold a JSON object, got " + io::brief(json));
  for (const auto& item : json.items())
    if (item.key() != "size" && item.key() != "steps" && item.key() != "guidance" && item.key() != "sampler" &&
        item.key() != "negative")
      fail("generation.json", file + ": unknown key '" + item.key() +
                                  "' (expected size, steps, guidance, sampler or negative)");
  if (const auto size = generation_entry<std::string>(json, "size", file, "a string WIDTHxHEIGHT, e.g. \"512x512\"")) {
    try {
      d.size = parse_image_size(*size);
    } catch (const SettingError&) {
      fail("generation.json", file + ": key 'size' has the value \"" + *size +
                                  "\" (expected a string WIDTHxHEIGHT, e.g. \"512x512\")");
    }
  }
  d.steps = generation_entry<int64_t>(json, "steps", file, "a whole number");
  d.guidance = generation_entry<double>(json, "guidance", file, "a number");
  d.sampler = generation_entry<std::string>(json, "sampler", file, "a string");
  d.negative = generation_entry<std::string>(json, "negative", file, "a string");
  return d;
}

SamplingOptions GenerationDefaults::sampling(const std::optional<std::string>& given_sampler,
                                             const std::optional<int64_t>& given_steps,
                                             const std::optional<double>& given_guidance) const {
  SamplingOptions o;
  o.sampler = given_sampler.value_or(sampler.value_or(o.sampler));
  o.steps = given_steps.value_or(steps.value_or(o.steps));
  o.guidance = given_guidance.value_or(guidance.value_or(o.guidance));
  return o;
}

}  // namespace kosmosg::pipeline
