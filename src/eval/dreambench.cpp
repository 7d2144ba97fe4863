#include "kosmosg/eval/dreambench.h"


#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "kosmosg/error.h"
#include "kosmosg/eval/scores.h"
#include "kosmosg/io/builtin_configs.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/dino.h"
#include "kosmosg/text/clip_tokenizer.h"
#include "kosmosg/util/progress.h"

namespace kosmosg::eval {
namespace {

namespace fs = std::filesystem;

constexpr const char* kSpec = "dreambench spec";
constexpr const char* kScorer = "dreambench scorer";
constexpr const char* kRun = "dreambench";
// Both metric transforms (CLIPProcessor's crop, DINO's Resize(256) + CenterCrop) end at 224.
constexpr int64_t kMetricImageSize = 224;

// A subject or file name that is used as one path component.
bool plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\\') == std::string::npos;
}

std::map<std::string, std::string> string_map(const io::Json& json, const std::string& key,
                                              const std::string& where) {
  const auto it = json.find(key);
  if (it == json.end() || !it->is_object())
    fail(kSpec, where + ": '" + key + "' is missing or not an object of name -> string");
  std::map<std::string, std::string> out;
  for (const auto& [name, value] : it->items()) {
    if (!value.is_string() || value.get<std::string>().empty())
      fail(kSpec, where + ": '" + key + "' entry '" + name + "' is " + io::brief(value) +
                      ", expected a non-empty string");
    if (!plain_file_name(name))
      fail(kSpec, where + ": '" + key + "' has the subject name '" + name +
                      "', expected a plain folder name");
    out[name] = value.get<std::string>();
  }
  return out;
}

std::vector<std::string> templates(const io::Json& json, const std::string& key,
                                   const std::string& where) {
  const auto it = json.find(key);
  if (it == json.end() || !it->is_array() || it->empty())
    fail(kSpec, where + ": '" + key + "' is missing or empty, expected a list of prompt templates");
  std::vector<std::string> out;
  for (const auto& value : *it) {
    if (!value.is_string())
      fail(kSpec, where + ": '" + key + "' holds " + io::brief(value) + ", expected strings");
    const auto text = value.get<std::string>();
    const auto first = text.find("{}");
    if (first == std::string::npos || text.find("{}", first + 2) != std::string::npos)
      fail(kSpec, where + ": '" + key + "' template \"" + text +
                      "\" should contain exactly one {} placeholder");
    out.push_back(text);
  }
  return out;
}

std::string fill(const std::string& pattern, const std::string& value) {
  std::string out = pattern;
  return out.replace(out.find("{}"), 2, value);
}

std::string image_name(size_t prompt_index, int64_t image_index) {
  char name[64];
  std::snprintf(name, sizeof name, "%02zu_%lld.png", prompt_index,
                static_cast<long long>(image_index));
  return name;
}

at::Tensor stack_pixels(const std::vector<at::Tensor>& images, at::Tensor (*transform)(const at::Tensor&)) {
  std::vector<at::Tensor> pixels;
  pixels.reserve(images.size());
  for (const auto& image : images) pixels.push_back(transform(image));
  return at::stack(pixels);
}

}  // namespace

DreamBenchSpec DreamBenchSpec::load(const std::string& json_path) {
  const io::Json json = json_path.empty() ? io::builtin_config("dreambench.json") : io::read_json(json_path);
  if (!json.is_object()) fail(kSpec, json_path + ": expected a JSON object");
  const auto references = string_map(json, "reference_image", json_path);
  DreamBenchSpec spec;
  for (const bool live : {false, true}) {
    const std::string kind = live ? "live" : "object";
    const auto metric = templates(json, kind + "_metric_prompts", json_path);
    const auto input = templates(json, kind + "_input_prompts", json_path);
    if (metric.size() != input.size())
      fail(kSpec, json_path + ": " + kind + "_metric_prompts has " + std::to_string(metric.size()) +
                      " templates but " + kind + "_input_prompts has " +
                      std::to_string(input.size()) + ", expected one input prompt per metric prompt");
    for (const auto& [name, noun] : string_map(json, kind + "_subjects", json_path)) {
      const auto ref = references.find(name);
      if (ref == references.end())
        fail(kSpec, json_path + ": subject '" + name + "' has no entry in 'reference_image'");
      if (!plain_file_name(ref->second))
        fail(kSpec, json_path + ": reference image '" + ref->second + "' of subject '" + name +
                        "' should be a file name inside the subject's folder");
      DreamBenchSubject subject{name, noun, live, ref->second, {}};
      for (size_t i = 0; i < metric.size(); ++i)
        subject.prompts.push_back({fill(input[i], "<i>"), fill(metric[i], noun)});
      spec.subjects.push_back(std::move(subject));
    }
  }
  std::sort(spec.subjects.begin(), spec.subjects.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (size_t i = 1; i < spec.subjects.size(); ++i)
    if (spec.subjects[i].name == spec.subjects[i - 1].name)
      fail(kSpec, json_path + ": subject '" + spec.subjects[i].name +
                      "' is both an object and a live subject");
  for (const auto& [name, file] : references)
    if (std::none_of(spec.subjects.begin(), spec.subjects.end(),
                     [&](const auto& s) { return s.name == name; }))
      fail(kSpec, json_path + ": 'reference_image' names '" + name +
                      "', which is neither in object_subjects nor in live_subjects");
  if (spec.subjects.empty()) fail(kSpec, json_path + ": no subjects, expected at least one");
  return spec;
}

const DreamBenchSubject& DreamBenchSpec::subject(const std::string& name) const {
  for (const auto& s : subjects)
    if (s.name == name) return s;
  std::string known;
  for (const auto& s : subjects) known += (known.empty() ? "" : ", ") + s.name;
  fail(kSpec, "no subject '" + name + "', expected one of: " + known);
}

at::Tensor clip_processor_pixel_values(const at::Tensor& hwc_u8) {
  const at::Tensor resized = io::resize_shorter_side(hwc_u8, kMetricImageSize, io::Resample::Bicubic);
  const int64_t top = (resized.size(0) - kMetricImageSize) / 2;
  const int64_t left = (resized.size(1) - kMetricImageSize) / 2;
  // A 224 x 224 image passes through clip_pixel_values' resize and crop unchanged.
  return io::clip_pixel_values(resized.slice(0, top, top + kMetricImageSize)
                                   .slice(1, left, left + kMetricImageSize));
}

struct DreamBenchScorer::Impl {
  models::CLIPModel clip{nullptr};
  std::optional<text::CLIPTokenizer> tokenizer;
  int64_t text_positions = 0;
  models::DinoViT dino{nullptr};
  struct Reference {
    at::Tensor clip, dino;  // [1, D] each
  };
  std::map<std::string, Reference> references;
  std::map<std::string, at::Tensor> texts;
};

DreamBenchScorer::DreamBenchScorer(const std::string& clip_dir, const std::string& dino_weights,
                                   const std::string& dino_config)
    : impl_(std::make_shared<Impl>()) {
  if (!fs::is_directory(clip_dir))
    fail(kScorer, "CLIP folder '" + clip_dir +
                      "' does not exist, expected a transformers CLIPModel folder "
                      "(e.g. openai/clip-vit-base-patch32)");
  const auto config_path = (fs::path(clip_dir) / "config.json").string();
  if (!fs::is_regular_file(config_path))
    fail(kScorer, clip_dir + " has no config.json, expected a transformers CLIPModel folder");
  const auto json = io::read_json(config_path);
  if (!json.contains("text_config") || !json.contains("vision_config"))
    fail(kScorer, config_path +
                      " has no text_config/vision_config, expected a CLIPModel config (not a "
                      "CLIPTextModel or CLIPVisionModel one)");
  const auto config = models::CLIPConfig::from_json(json, config_path);
  if (config.vision.image_size != kMetricImageSize)
    fail(kScorer, config_path + ": vision_config.image_size is " +
                      std::to_string(config.vision.image_size) +
                      ", expected 224 (CLIPProcessor's crop size)");
  impl_->clip = models::CLIPModel(config);
  io::LoadOptions clip_options;
  clip_options.source_name = clip_dir;
  io::load_weights(*impl_->clip, io::read_component_weights(clip_dir, {"model"}), clip_options);
  impl_->clip->eval();
  impl_->tokenizer = text::CLIPTokenizer::from_folder(clip_dir);
  if (static_cast<int64_t>(impl_->tokenizer->vocab_size()) > config.text.vocab_size)
    fail(kScorer, clip_dir + ": the tokenizer has " +
                      std::to_string(impl_->tokenizer->vocab_size()) +
                      " tokens but text_config.vocab_size is " +
                      std::to_string(config.text.vocab_size) + ", expected at least as many");
  impl_->text_positions = config.text.max_position_embeddings;

  if (!fs::is_regular_file(dino_weights))
    fail(kScorer, "DINO weights file '" + dino_weights +
                      "' does not exist, expected a safetensors file of the dino_vits16 state dict");

  const auto dino = dino_config.empty()
                        ? models::DinoViTConfig{}
                        : models::DinoViTConfig::from_json(io::read_json(dino_config), dino_config);
  if (dino.img_size != kMetricImageSize)
    fail(kScorer, "DINO img_size is " + std::to_string(dino.img_size) +
                      ", expected 224 (the DreamBench DINO crop; other sizes would need DINO's "
                      "position interpolation)");
  impl_->dino = models::DinoViT(dino);
  io::LoadOptions dino_options;
  dino_options.source_name = dino_weights;
  const auto weights = io::SafeTensors::open(dino_weights);
  // The official file carries no config: name the likely cause before load_weights lists every key.
  if (weights.contains("cls_token") && !weights.info("cls_token").shape.empty() &&
      weights.info("cls_token").shape.back() != dino.embed_dim)
    fail(kScorer, dino_weights + " holds a DINO ViT with embed_dim " +
                      std::to_string(weights.info("cls_token").shape.back()) + ", but the config (" +
                      (dino_config.empty() ? "the ViT-S/16 default" : dino_config) + ") says " +
                      std::to_string(dino.embed_dim) + ": give the matching DINO config JSON");
  io::load_weights(*impl_->dino, weights.tensors(), dino_options);
  impl_->dino->eval();
}

at::Tensor DreamBenchScorer::clip_image_features(const std::vector<at::Tensor>& images) {
  torch::NoGradGuard no_grad;
  return impl_->clip->get_image_features(stack_pixels(images, clip_processor_pixel_values));
}

at::Tensor DreamBenchScorer::clip_text_features(const std::string& text) {
  const auto cached = impl_->texts.find(text);
  if (cached != impl_->texts.end()) return cached->second;
  const auto length = static_cast<int64_t>(impl_->tokenizer->bpe_tokens(text).size()) + 2;
  if (length > impl_->text_positions)
    fail(kScorer, "metric prompt \"" + text + "\" is " + std::to_string(length) +
                      " tokens with bos and eos, expected at most " +
                      std::to_string(impl_->text_positions) + " (CLIP's text positions)");
  const auto ids = impl_->tokenizer->encode(text, static_cast<size_t>(length));
  const auto input_ids = torch::tensor(ids, torch::kLong).unsqueeze(0);
  torch::NoGradGuard no_grad;
  auto features = impl_->clip->get_text_features(input_ids, torch::ones_like(input_ids));
  impl_->texts.emplace(text, features);
  return features;
}

at::Tensor DreamBenchScorer::dino_features(const std::vector<at::Tensor>& images) {
  torch::NoGradGuard no_grad;
  return impl_->dino->forward(stack_pixels(images, io::dino_pixel_values));
}

void DreamBenchScorer::add_reference(const std::string& reference_image) {
  if (impl_->references.count(reference_image)) return;
  const std::vector<at::Tensor> image{io::read_image(reference_image)};
  impl_->references[reference_image] = {clip_image_features(image), dino_features(image)};
}

std::vector<DreamBenchScores> DreamBenchScorer::score(const std::vector<at::Tensor>& images,
                                                      const std::string& reference_image,
                                                      const std::string& metric_prompt) {
  if (images.empty()) return {};
  add_reference(reference_image);
  const auto& reference = impl_->references.at(reference_image);
  const auto n = static_cast<int64_t>(images.size());
  const auto clip_images = clip_image_features(images);
  const auto clip_t = clip_score(clip_images, clip_text_features(metric_prompt).expand({n, -1}));
  const auto clip_i = clip_score(clip_images, reference.clip.expand({n, -1}));
  const auto dino = dino_score(dino_features(images), reference.dino.expand({n, -1}));
  std::vector<DreamBenchScores> out(images.size());
  for (int64_t i = 0; i < n; ++i)
    out[i] = {dino[i].item<double>(), clip_i[i].item<double>(), clip_t[i].item<double>()};
  return out;
}

namespace {

// One prompt of one subject: a batch of images_per_prompt files.
struct Batch {
  const DreamBenchSubject* subject;
  size_t prompt_index;
  std::string reference;         // path of the reference image
  std::vector<fs::path> files;   // inside the output folder
  std::vector<std::string> names;  // the same, relative to the output folder
  std::vector<int64_t> missing;  // indices into files to (re)generate
};

std::map<std::string, std::string> png_text(const Batch& batch, const std::string& seed) {
  const auto& prompt = batch.subject->prompts[batch.prompt_index];
  return {{"subject", batch.subject->name},
          {"prompt", prompt.input},
          {"metric_prompt", prompt.metric},
          {"reference_image", batch.subject->name + "/" + batch.subject->reference_image},
          {"seed", seed}};
}

// Whether `file` is a complete image of this batch from an earlier run. A damaged file (every
// chunk's CRC and the IEND chunk are checked) is regenerated; one made with other settings is an
// error, since mixing runs would silently change what is scored.
bool complete(const fs::path& file, const std::map<std::string, std::string>& expected) {
  if (!fs::exists(file)) return false;
  std::map<std::string, std::string> found;
  try {
    found = io::read_png_text(file.string());
  } catch (const Error& e) {
    spdlog::warn("{} is damaged ({}); generating it again", file.string(), e.what());
    return false;
  }
  for (const char* key : {"subject", "prompt", "reference_image", "seed"}) {
    const auto it = found.find(key);
    if (it == found.end() || it->second != expected.at(key))
      fail(kRun, file.string() + " was generated with " + key + " " +
                     (it == found.end() ? "(none)" : "'" + it->second + "'") +
                     ", this run expects '" + expected.at(key) +
                     "': use another output folder or remove the file");
  }
  return true;
}

std::vector<const DreamBenchSubject*> select_subjects(const DreamBenchSpec& spec,
                                                      const std::vector<std::string>& names) {
  std::vector<const DreamBenchSubject*> out;
  if (names.empty()) {
    for (const auto& s : spec.subjects) out.push_back(&s);
    return out;
  }
  const std::set<std::string> wanted(names.begin(), names.end());
  for (const auto& name : wanted) spec.subject(name);
  for (const auto& s : spec.subjects)
    if (wanted.count(s.name)) out.push_back(&s);
  return out;
}

void check_generated(const std::vector<at::Tensor>& images, int64_t expected, const Batch& batch) {
  const std::string what = "the generator, for subject '" + batch.subject->name + "' prompt " +
                           std::to_string(batch.prompt_index);
  if (static_cast<int64_t>(images.size()) != expected)
    fail(kRun, what + ", returned " + std::to_string(images.size()) + " images, expected " +
                   std::to_string(expected));
  for (const auto& image : images)
    if (!image.defined() || image.scalar_type() != at::kByte || image.dim() != 3 || image.size(2) != 3)
      fail(kRun, what + ", returned an image that is not uint8 [H, W, 3]");
}

io::Json summary_scores(const std::vector<const DreamBenchImageScore*>& images) {
  std::vector<double> dino, clip_i, clip_t;
  for (const auto* image : images) {
    dino.push_back(image->scores.dino);
    clip_i.push_back(image->scores.clip_i);
    clip_t.push_back(image->scores.clip_t);
  }
  const auto metric = [](const std::vector<double>& v) {
    return score_metric(at::tensor(v, at::kDouble)) / 100.0;
  };
  return {{"DINO", metric(dino)},
          {"CLIP-I", metric(clip_i)},
          {"CLIP-T", metric(clip_t)},
          {"images", images.size()}};
}

}  // namespace

DreamBenchResult run_dreambench(const DreamBenchOptions& options, const GenerateFn& generate) {
  if (!generate) fail(kRun, "no generator given");
  if (options.images_per_prompt < 1)
    fail(kRun, "images_per_prompt is " + std::to_string(options.images_per_prompt) +
                   ", expected at least 1");
  if (options.max_prompts && *options.max_prompts < 1)
    fail(kRun, "max_prompts is " + std::to_string(*options.max_prompts) + ", expected at least 1");
  if (options.output_dir.empty()) fail(kRun, "no output folder given");
  const auto spec = DreamBenchSpec::load(options.spec_path);
  const auto subjects = select_subjects(spec, options.subjects);

  if (options.data_dir.empty() || !fs::is_directory(options.data_dir))
    fail(kRun, "DreamBench data folder '" + options.data_dir +
                   "' does not exist, expected the DreamBooth dataset (<data>/<subject>/<image>.jpg)");
  const fs::path data(options.data_dir), out(options.output_dir);
  for (const auto* subject : subjects) {
    const auto folder = data / subject->name;
    if (!fs::is_directory(folder))
      fail(kRun, "subject folder " + folder.string() + " does not exist (subject '" +
                     subject->name + "' of the DreamBooth dataset)");
    if (!fs::is_regular_file(folder / subject->reference_image))
      fail(kRun, "reference image " + (folder / subject->reference_image).string() +
                     " of subject '" + subject->name + "' does not exist");
  }
  DreamBenchScorer scorer(options.clip_dir, options.dino_weights, options.dino_config);
  for (const auto* subject : subjects)
    scorer.add_reference((data / subject->name / subject->reference_image).string());

  const std::string seed = std::to_string(options.seed);
  std::vector<Batch> batches;
  for (const auto* subject : subjects) {
    const size_t prompts = options.max_prompts
                               ? std::min(subject->prompts.size(), static_cast<size_t>(*options.max_prompts))
                               : subject->prompts.size();
    for (size_t p = 0; p < prompts; ++p) {
      Batch batch{subject, p, (data / subject->name / subject->reference_image).string(), {}, {}, {}};
      const auto expected = png_text(batch, seed);
      for (int64_t k = 0; k < options.images_per_prompt; ++k) {
        batch.names.push_back(subject->name + "/" + image_name(p, k));
        batch.files.push_back(out / batch.names.back());
        if (!complete(batch.files.back(), expected)) batch.missing.push_back(k);
      }
      batches.push_back(std::move(batch));
    }
  }

  DreamBenchResult result;
  const auto pending = std::count_if(batches.begin(), batches.end(),
                                     [](const Batch& b) { return !b.missing.empty(); });
  if (pending > 0) {
    Progress progress("DreamBench generate", pending, !options.show_progress);
    for (const auto& batch : batches) {
      if (batch.missing.empty()) continue;
      fs::create_directories(out / batch.subject->name);
      const auto images = generate(batch.subject->prompts[batch.prompt_index].input,
                                   batch.reference, options.images_per_prompt, options.seed);
      check_generated(images, options.images_per_prompt, batch);
      const auto text = png_text(batch, seed);
      for (const int64_t k : batch.missing) io::write_png(batch.files[k].string(), images[k], text);
      result.generated += static_cast<int64_t>(batch.missing.size());
      progress.tick();
    }
  }
  result.reused = static_cast<int64_t>(batches.size()) * options.images_per_prompt - result.generated;

  {
    Progress progress("DreamBench score", static_cast<int64_t>(batches.size()), !options.show_progress);
    for (const auto& batch : batches) {
      std::vector<at::Tensor> images;
      for (const auto& file : batch.files) images.push_back(io::read_image(file.string()));
      const auto& prompt = batch.subject->prompts[batch.prompt_index];
      const auto scores = scorer.score(images, batch.reference, prompt.metric);
      for (size_t k = 0; k < scores.size(); ++k)
        result.images.push_back({batch.subject->name, static_cast<int64_t>(batch.prompt_index),
                                 static_cast<int64_t>(k), prompt.input, prompt.metric,
                                 batch.names[k], scores[k]});
      progress.tick();
    }
  }

  std::string lines;
  std::vector<const DreamBenchImageScore*> all;
  std::map<std::string, std::vector<const DreamBenchImageScore*>> by_subject;
  for (const auto& image : result.images) {
    lines += io::Json{{"subject", image.subject},
                      {"prompt_index", image.prompt_index},
                      {"image_index", image.image_index},
                      {"prompt", image.prompt},
                      {"metric_prompt", image.metric_prompt},
                      {"file", image.file},
                      {"dino", image.scores.dino},
                      {"clip_i", image.scores.clip_i},
                      {"clip_t", image.scores.clip_t}}
                 .dump() +
             "\n";
    all.push_back(&image);
    by_subject[image.subject].push_back(&image);
  }
  io::Json summary = summary_scores(all);
  result.dino = summary["DINO"].get<double>();
  result.clip_i = summary["CLIP-I"].get<double>();
  result.clip_t = summary["CLIP-T"].get<double>();
  summary["subjects"] = subjects.size();
  summary["prompts"] = batches.size();
  summary["images_per_prompt"] = options.images_per_prompt;
  summary["seed"] = options.seed;
  summary["per_subject"] = io::Json::object();
  for (const auto& [name, images] : by_subject) summary["per_subject"][name] = summary_scores(images);
  fs::create_directories(out);
  io::write_text_atomically((out / "scores.jsonl").string(), lines);
  io::write_text_atomically((out / "summary.json").string(), summary.dump(1) + "\n");
  return result;
}

}  // namespace kosmosg::eval
