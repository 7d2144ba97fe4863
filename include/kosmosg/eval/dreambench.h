#pragma once
// The DreamBench evaluation as Kosmos-G's eval/ runs it: the benchmark definition
// (configs/dreambench.json), resumable generation into an output folder, and the DINO, CLIP-I and
// CLIP-T scores of every generated image against its subject's reference image and metric prompt.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kosmosg::eval {

// One prompt of a subject: what Kosmos-G is given and what CLIP-T compares against.
struct DreamBenchPrompt {
  std::string input;   // the Kosmos-G prompt, the template's {} replaced by "<i>": "<i> in the snow"
  std::string metric;  // the DreamBench prompt with the class noun: "a dog in the snow"
};

// One DreamBooth subject with its expanded prompts.
struct DreamBenchSubject {
  std::string name;             // the dataset folder, e.g. "dog2"
  std::string class_noun;       // e.g. "dog", "stuffed animal"
  bool live = false;            // live subjects (animals) take the live prompt list
  std::string reference_image;  // file name inside <data>/<name>/, e.g. "02.jpg"
  std::vector<DreamBenchPrompt> prompts;
};

// The benchmark definition.
struct DreamBenchSpec {
  std::vector<DreamBenchSubject> subjects;  // sorted by name

  // Reads a file laid out like configs/dreambench.json: "object_subjects" / "live_subjects"
  // (name -> class noun), "reference_image" (name -> file) and the prompt templates
  // "{object,live}_{metric,input}_prompts", each with exactly one "{}"; an empty path reads the
  // copy compiled into the library. Throws naming the file and the entry on any inconsistency.
  static DreamBenchSpec load(const std::string& json_path);
  // The subject called `name`; throws listing the known names when there is none.
  const DreamBenchSubject& subject(const std::string& name) const;
};

// transformers' CLIPProcessor image preprocessing (clip-vit-base-patch32 defaults): Pillow bicubic
// shorter side 224, center crop 224 with floor offsets ((H - 224) // 2, unlike torchvision's
// round), CLIP mean/std; float32 [3, 224, 224].
at::Tensor clip_processor_pixel_values(const at::Tensor& hwc_u8);

// The three scores of one generated image, on the 0-100 scale of the eval scripts.
struct DreamBenchScores {
  double dino = 0, clip_i = 0, clip_t = 0;
};

// The metric models: CLIP (CLIP-I, CLIP-T) and DINO ViT (DINO), on the CPU in float32.
class DreamBenchScorer {
 public:
  // `clip_dir`: a transformers CLIPModel folder (config.json with text_config/vision_config,
  // model.safetensors, vocab.json, merges.txt), e.g. openai/clip-vit-base-patch32.
  // `dino_weights`: a safetensors file of the facebookresearch/dino state dict (dino_vits16);
  // `dino_config`: an optional JSON of DinoViTConfig keys, "" for ViT-S/16.
  DreamBenchScorer(const std::string& clip_dir, const std::string& dino_weights,
                   const std::string& dino_config = "");

  // Scores uint8 [H, W, 3] images against the reference image file (features cached per path)
  // and the metric prompt (features cached per text).
  std::vector<DreamBenchScores> score(const std::vector<at::Tensor>& images,
                                      const std::string& reference_image,
                                      const std::string& metric_prompt);
  // Reads a reference image and caches its features; throws naming the file when unreadable.
  void add_reference(const std::string& reference_image);

  // get_image_features of CLIPProcessor-preprocessed images, [N, projection_dim].
  at::Tensor clip_image_features(const std::vector<at::Tensor>& images);
  // get_text_features of one prompt as CLIPProcessor(padding=True) tokenises it alone (bos, BPE,
  // eos, all-ones mask), [1, projection_dim]; throws when it exceeds the CLIP positions.
  at::Tensor clip_text_features(const std::string& text);
  // DINO CLS features of DINO-preprocessed images, [N, embed_dim].
  at::Tensor dino_features(const std::vector<at::Tensor>& images);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Generates `num_images` uint8 [H, W, 3] images for a Kosmos-G prompt with one "<i>" that stands
// for the reference image, with the random generator seeded by `seed` (the same for a whole
// batch, so a batch is reproducible as a unit).
using GenerateFn = std::function<std::vector<at::Tensor>(
    const std::string& kosmosg_prompt, const std::string& reference_image_path,
    int64_t num_images, uint64_t seed)>;

// What run_dreambench needs.
struct DreamBenchOptions {
  std::string spec_path;  // empty: the official benchmark compiled in from configs/dreambench.json
  std::string data_dir;    // the DreamBooth dataset: <data_dir>/<subject>/<reference image>
  std::string output_dir;  // images, scores.jsonl, summary.json
  std::string clip_dir;    // see DreamBenchScorer
  std::string dino_weights;
  std::string dino_config;
  int64_t images_per_prompt = 4;
  uint64_t seed = 0;  // every prompt's batch starts from this seed, as the official script does
  std::vector<std::string> subjects;  // only these subjects; empty = all
  std::optional<int64_t> max_prompts;  // only each subject's first N prompts (quick runs)
  bool show_progress = true;
};

// One scored image.
struct DreamBenchImageScore {
  std::string subject;
  int64_t prompt_index = 0, image_index = 0;
  std::string prompt, metric_prompt;
  std::string file;  // relative to the output folder: "<subject>/<prompt index>_<image index>.png"
  DreamBenchScores scores;
};

// The scored run.
struct DreamBenchResult {
  std::vector<DreamBenchImageScore> images;
  // max(mean, 0) / 100 over all images, as the paper reports them.
  double dino = 0, clip_i = 0, clip_t = 0;
  int64_t generated = 0;  // images written by this run
  int64_t reused = 0;     // images found complete from an earlier run
};

// Runs the benchmark: checks the data (every selected subject's reference image) and loads the
// metric models before generating anything; generates the missing images of each prompt
// (<out>/<subject>/<pp>_<k>.png with the prompt, metric prompt, subject and seed in PNG text
// chunks; a batch is regenerated whole but only its missing or corrupt files are written; a
// file from other settings is an error); then scores every image and writes <out>/scores.jsonl
// (one line per image, scores on the 0-100 scale) and <out>/summary.json, atomically.
DreamBenchResult run_dreambench(const DreamBenchOptions& options, const GenerateFn& generate);

}  // namespace kosmosg::eval
