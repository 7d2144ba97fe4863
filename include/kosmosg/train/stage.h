#pragma once
// The training stages: the three of Kosmos-G (reference §6) and the diffusion decoder's own (vae,
// t2i): what each trains, what it freezes, and its loss. A Kosmos-G stage owns its modules under
// the official KosmosGmodel state-dict names (gpt_model.*, img_model.*, img_connector.*, aligner.*,
// diffusion_unet.unet.*, vae.vae.*); a decoder stage under the component names of a diffusers
// folder (vae.*, unet.*, text_encoder.*).
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kosmosg/data/sample.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/models/kosmosg.h"
#include "kosmosg/train/optim.h"

namespace kosmosg::train {

// What one forward of a stage produced. `loss` is what backward runs on (fairseq's summed form);
// gradients are divided by `sample_size` before clipping (reference §6.6).
struct StageLoss {
  at::Tensor loss;
  int64_t sample_size = 1;
  int64_t samples = 0;  // rows of the batch
  std::map<std::string, double> logs;  // "loss" (per sample size) and the stage's parts
  // intermediates: "logits" (lm); "latents" (vae, t2i, instruct); "noise", the diffusion ε (t2i, instruct)
  std::map<std::string, at::Tensor> outputs;
};

// Settings that change what a stage computes.
struct StageOptions {
  // Comma-separated substrings: img_model parameters whose name contains one are trained in the
  // lm and instruct stages (official --no-freeze-layer). Empty: the last ViT block and ln_post.
  std::string no_freeze_layer;
  double condition_drop_rate = 0.1;  // instruct: rows whose condition becomes the null embedding
  // Official stage-3 behaviour: the ViT's checkpointed last block gets no gradient (only weight
  // decay moves it). Off: it trains as the paper describes.
  bool official_vit_checkpoint = false;
  // Recompute the MLLM, ViT, aligner and UNet blocks in backward instead of keeping activations.
  bool gradient_checkpointing = false;
  // Storage of the frozen diffusers parts (UNet, VAE), which then run in it with autocast off;
  // the trainable parts compute under the trainer's autocast and keep float32 weights unless the
  // precision policy is memory-efficient.
  c10::ScalarType frozen_dtype = c10::kFloat;
  // vae: weight of the posterior's KL divergence to N(0, I) beside the L1 reconstruction.
  double kl_weight = 1e-6;
  // vae: write scaling_factor = 1 / (standard deviation of the training latents) into the output's
  // vae/config.json, so that a UNet trained on it sees unit-variance latents, as Stable Diffusion's
  // 0.18215 makes its own VAE's (LDM §4.3.2). Off: the config's scaling_factor stays.
  bool fit_scaling_factor = false;
  // vae: train on a random crop_size² window of each image (0: the whole image). The autoencoder is
  // convolutional, so it learns from crops what it then does to whole images, at a fraction of the
  // cost (LDM trained its autoencoders on 256² crops).
  int64_t crop_size = 0;
  // t2i: the CLIP text encoder trains with the UNet (otherwise it stays frozen).
  bool train_text_encoder = false;
  // t2i, instruct: encode each distinct target image once with the frozen VAE and keep its
  // posterior in memory (for data sets that fit; targets must not be randomly augmented).
  bool cache_latents = false;
  // t2i, instruct: Min-SNR-γ weighting of the diffusion loss (train/diffusion_loss.h); 0: the
  // official unweighted loss.
  double snr_gamma = 0.0;
  // t2i, instruct: offset noise (train/diffusion_loss.h): the weight of a per-channel normal added
  // to each sample's noise; 0: the official noise.
  double noise_offset = 0.0;
  // t2i: weight of the hard-negative loss (0: off). A row whose manifest line lists negatives
  // (data/sample.h) is also denoised under one of them, and softplus((L⁺ − L⁻) / τ), its diffusion
  // loss under the caption against under the negative, joins the loss: the decoder read as a
  // classifier between the two captions (Li et al. 2023, "Your diffusion model is secretly a
  // zero-shot classifier"), so that captions it would otherwise read as the same bag of words draw
  // apart.
  double negative_weight = 0.0;
  double negative_temperature = 0.05;  // τ, in the units of the per-sample diffusion loss
  // t2i, instruct: the diffusion target is the VAE posterior's mean, not a sample of it (for a VAE
  // whose posterior is wide enough that its sampling noise drowns the loss).
  bool latents_from_mean = false;
};

// The weights and configs a stage is built from. Components a stage does not use may be empty.
struct StageModels {
  io::Json kosmosg_config;      // the kosmosg/config.json layout (models/kosmosg.h)
  io::TensorMap kosmosg;        // gpt_model.*, img_model.*, img_connector.*, aligner.* (M, maybe N)
  io::Json unet_config, vae_config, scheduler_config, text_encoder_config;
  // Diffusers (transformers for the text encoder) names without prefix. The decoder stages start
  // a component whose folder has a config but no weights from a seeded draw.
  io::TensorMap unet, vae, text_encoder;
  std::string text_encoder_dir;  // align: the SD1.5 text_encoder/ folder (the frozen teacher)
  std::string tokenizer_dir;     // align, t2i: the SD1.5 tokenizer/ folder (CLIP BPE)

  // Reads what `kind` needs from a model folder (kosmosg/ plus the diffusers parts). Missing
  // files or weights are one error that names each of them.
  static StageModels from_folder(const std::string& dir, data::StageKind kind);
};

// One row of the parameter table printed when training starts.
struct ModuleSummary {
  std::string module;
  int64_t parameters = 0, trainable = 0;
};

class Stage {
 public:
  virtual ~Stage() = default;
  virtual data::StageKind kind() const = 0;

  // Every module of the stage under the official names.
  torch::nn::Module& model() { return *root_; }
  // The trainable tensors (official names; the tied LM head appears once, as embed_tokens).
  const NamedParameters& trainable() const { return trainable_; }
  std::vector<ModuleSummary> summary() const;

  // The forward and loss on `batch`. A row's random draws come from its sample seed when the batch
  // carries them (then they do not depend on the batch split), from `generator` otherwise.
  virtual StageLoss forward(const data::Batch& batch, at::Generator generator) = 0;

  // Fills in what the stage's samples need beside the stage kind (image sizes, slots per image).
  virtual void configure_samples(data::SampleOptions& options) const = 0;

  // The weights files of the output model folder the stage writes, by path relative to the folder:
  // kosmosg/model.safetensors for the Kosmos-G stages (every gpt_model/img_model/img_connector/
  // aligner tensor, the tied head under both names); the diffusers components a decoder stage
  // trains or initialised.
  virtual std::map<std::string, io::TensorMap> output_weights() const = 0;
  // Config files the stage changes in the output model folder, by path relative to the folder.
  virtual std::map<std::string, io::Json> output_configs() const { return {}; }
  // What the stage carries from update to update besides weights (null: nothing); checkpoints
  // keep it, so that a resumed run continues exactly.
  virtual io::Json state() const { return nullptr; }
  virtual void load_state(const io::Json& state) {}
  // The trainable tensors only, the tied head under both names.
  io::TensorMap trainable_state() const;
  // Copies `weights` (a subset of trainable_state's names) into the trainable tensors.
  void load_trainable(const io::TensorMap& weights, const std::string& source);

  // Training mode for the trained parts; frozen diffusers parts stay in eval mode.
  virtual void train_mode();

 protected:
  explicit Stage(const StageOptions& options);
  // Marks trainable the parameters `is_trainable(name)` accepts and freezes the rest.
  void select_trainable(const std::function<bool(const std::string&)>& is_trainable);

  StageOptions options_;
  std::shared_ptr<torch::nn::Module> root_;
  NamedParameters trainable_;
};

// Builds the stage of `kind` from loaded weights; a required component that is missing is an
// error naming it.
std::unique_ptr<Stage> make_stage(data::StageKind kind, const StageModels& models, const StageOptions& options);

// Stage 2's forward with the CLIP teacher's output given ([B, 77, W]) instead of computed: the
// golden cases replace the teacher.
StageLoss align_forward_with_teacher(Stage& stage, const data::Batch& batch, const at::Tensor& teacher);

// A diffusion stage's random draws (instruct, t2i), separable so a caller can supply them.
struct InstructDraws {
  at::Tensor vae_noise;  // [B, 4, h, w]: the posterior sample's standard normal draw
  at::Tensor noise;      // [B, 4, h, w]
  at::Tensor timesteps;  // int64 [B]
  at::Tensor random_p;   // float [B]
};
// Stage 3's forward with given draws.
StageLoss instruct_forward_with_draws(Stage& stage, const data::Batch& batch, const InstructDraws& draws);

}  // namespace kosmosg::train
