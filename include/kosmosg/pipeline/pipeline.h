#pragma once
// One generation pipeline for every model kind: the diffusion decoder (UNet + VAE + sampler), a
// condition encoder (Stable Diffusion's CLIP text encoder or Kosmos-G's MLLM + AlignerNet) and the
// add-ons: LoRA here, ControlNets and image-to-image through GenerateOptions.
#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kosmosg/pipeline/condition_encoder.h"
#include "kosmosg/pipeline/diffusion.h"

namespace kosmosg::models {
struct LoraWeights;
}

namespace kosmosg::pipeline {

class Pipeline {
 public:
  Pipeline(DiffusionDecoder decoder, std::unique_ptr<ConditionEncoder> encoder);

  // Loads a model folder: Kosmos-G when it holds kosmosg/ (see is_kosmosg_folder), else a
  // diffusers Stable Diffusion folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/,
  // scheduler/).
  // With `block_storage` bfloat16 or float16, each model's large repeated blocks (UNet, MLLM, ViT,
  // aligner) are stored in it as soon as that model is loaded and computed in float32 (about 40 %
  // less memory for Kosmos-G; the pipeline must then run in float32).
  static Pipeline from_folder(const std::string& dir, c10::ScalarType block_storage = c10::kFloat);
  static bool is_kosmosg_folder(const std::string& dir);

  // One image: checks `options` once, before the prompt is encoded, then samples and decodes:
  // final latents (1×4×h×w) and the image in [-1, 1] (1×3×H×W).
  std::pair<at::Tensor, at::Tensor> generate(const GenerateOptions& options, const StepCallback& on_step = {});
  // Several images in one sampler loop (much faster for a small model): each has its own prompt,
  // images and seed (its initial and per-step noise) and comes out as generate() makes it, up to
  // rounding; they must share the size, sampling and negative prompt. No image-to-image, initial
  // latents or ControlNets. Images in [-1, 1] (N×3×H×W).
  at::Tensor generate_batch(const std::vector<GenerateOptions>& batch);

  // Attaches a LoRA file's updates to the UNet and to the encoder's text encoder when it has one
  // (models::attach_lora); `skipped` receives the count of text-encoder updates with nowhere to go.
  // The returned strength can be changed between images.
  std::shared_ptr<double> attach_lora(const models::LoraWeights& lora, double strength, size_t* skipped = nullptr);
  // Adds the attached LoRA updates into the weights once (faster sampling).
  void merge_lora();

  void to(const c10::Device& device, c10::ScalarType dtype);
  DiffusionDecoder& decoder() { return decoder_; }
  const DiffusionDecoder& decoder() const { return decoder_; }
  ConditionEncoder& encoder() { return *encoder_; }

 private:
  DiffusionDecoder decoder_;
  std::unique_ptr<ConditionEncoder> encoder_;
};

// "WIDTHxHEIGHT" (e.g. "512x512") → {width, height}; a SettingError ("size") otherwise. The
// values are checked by check_image_size.
std::pair<int64_t, int64_t> parse_image_size(const std::string& text);

// A model folder's own generation defaults: its optional generation.json, e.g.
// {"size": "64x64", "steps": 20, "guidance": 5.0, "sampler": "dpmpp-2m", "negative": ""}, every
// key optional. Unknown keys and wrong types are errors naming the file and the key; the values
// themselves are checked when an image is generated.
struct GenerationDefaults {
  std::optional<std::pair<int64_t, int64_t>> size;  // width, height
  std::optional<int64_t> steps;
  std::optional<double> guidance;
  std::optional<std::string> sampler, negative;

  // Sampler, steps and guidance: each as given, else this file's, else the library's default.
  SamplingOptions sampling(const std::optional<std::string>& sampler, const std::optional<int64_t>& steps,
                           const std::optional<double>& guidance) const;
};

// Reads DIR/generation.json; all defaults unset when there is none.
GenerationDefaults read_generation_defaults(const std::string& model_dir);

}  // namespace kosmosg::pipeline
