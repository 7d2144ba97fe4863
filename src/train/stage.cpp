#include "kosmosg/train/stage.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <unordered_map>
#include <utility>

#include <ATen/CPUGeneratorImpl.h>
#include <spdlog/spdlog.h>

#include "kosmosg/data/loader.h"
#include "kosmosg/error.h"
#include "kosmosg/nn/autocast.h"
#include "kosmosg/models/aligner.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/models/vae.h"
#include "kosmosg/text/clip_tokenizer.h"
#include "kosmosg/train/diffusion_loss.h"

namespace kosmosg::train {
namespace {

namespace fs = std::filesystem;

// A batch row's noise, timestep and condition drop come from a generator seeded by its sample's
// seed in this domain.
constexpr uint64_t kRowDrawDomain = 103;
// The vae stage's crop of a row: its position, from the row's seed in this domain.
constexpr uint64_t kCropDomain = 104;

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

bool has_prefix(const io::TensorMap& weights, const std::string& prefix) {
  auto it = weights.lower_bound(prefix);
  return it != weights.end() && starts_with(it->first, prefix);
}

const char* const kTiedHead = "gpt_model.decoder.output_projection.weight";
const char* const kEmbedTokens = "gpt_model.decoder.embed_tokens.weight";

io::LoadOptions load_options(const std::string& source) {
  io::LoadOptions o;
  o.source_name = source;
  return o;
}

// Loads `prefix`* of `weights` into `module` strictly.
void load_component(torch::nn::Module& module, const io::TensorMap& weights, const std::string& prefix,
                    const std::string& source) {
  io::load_weights(module, models::strip_prefix(weights, prefix), load_options(source + " (" + prefix + "*)"));
}

std::shared_ptr<torch::nn::Module> holder(const std::string& child, std::shared_ptr<torch::nn::Module> module) {
  auto h = std::make_shared<torch::nn::Module>();
  h->register_module(child, std::move(module));
  return h;
}

at::Tensor batch_tensor(const at::Tensor& t, const char* name) {
  if (!t.defined()) fail("train", std::string("the batch has no ") + name);
  return t;
}

// The frozen VAE's posterior of each target image. With `cache` on, each distinct image (by the
// 128-bit hash of its pixels) is encoded once, with the batch's other new images, and kept in
// memory: the VAE is frozen, so later epochs skip its encoder. Off: every batch is encoded.
class TargetEncoder {
 public:
  explicit TargetEncoder(bool cache) : cache_(cache) {}

  // float32 mean and logvar of `images` [B, 3, H, W] in [-1, 1], the VAE run in `dtype` on `device`.
  models::DiagonalGaussian encode(models::AutoencoderKL& vae, const at::Tensor& images, const c10::Device& device,
                                  c10::ScalarType dtype) {
    torch::NoGradGuard no_grad;
    nn::AutocastGuard no_autocast(device.type(), at::kFloat);
    auto run = [&](const at::Tensor& x) {
      const auto posterior = vae->encode(x.to(device, dtype));
      return models::DiagonalGaussian{posterior.mean.to(at::kFloat), posterior.logvar.to(at::kFloat)};
    };
    if (!cache_) return run(images);
    const at::Tensor pixels = images.to(at::kCPU, at::kFloat).contiguous();
    std::vector<Key> keys;
    std::vector<int64_t> fresh;
    for (int64_t b = 0; b < pixels.size(0); ++b) {
      keys.push_back(key(pixels[b]));
      if (!cached_.count(keys.back()) &&
          std::find(keys.begin(), keys.end() - 1, keys.back()) == keys.end() - 1)
        fresh.push_back(b);
    }
    if (!fresh.empty()) {
      const auto encoded = run(images.index_select(0, at::tensor(fresh, at::kLong).to(images.device())));
      for (size_t i = 0; i < fresh.size(); ++i) {
        const auto row = static_cast<int64_t>(i);
        cached_[keys[static_cast<size_t>(fresh[i])]] = {encoded.mean.narrow(0, row, 1).clone(),
                                                        encoded.logvar.narrow(0, row, 1).clone()};
      }
    }
    std::vector<at::Tensor> means, logvars;
    for (const Key& k : keys) {
      const auto& posterior = cached_.at(k);
      means.push_back(posterior.mean);
      logvars.push_back(posterior.logvar);
    }
    return {at::cat(means), at::cat(logvars)};
  }

 private:
  using Key = std::pair<uint64_t, uint64_t>;
  struct KeyHash {
    size_t operator()(const Key& k) const { return static_cast<size_t>(k.first ^ (k.second * 0x9E3779B97F4A7C15ull)); }
  };

  // Two independent 64-bit hashes of the pixels and the shape (FNV-1a and a multiply-xorshift).
  static Key key(const at::Tensor& image) {
    uint64_t fnv = 0xCBF29CE484222325ull, mix = static_cast<uint64_t>(image.numel()) * 0x9E3779B97F4A7C15ull;
    for (const int64_t d : image.sizes()) fnv = (fnv ^ static_cast<uint64_t>(d)) * 0x100000001B3ull;
    const auto* bytes = static_cast<const unsigned char*>(image.data_ptr());
    const size_t n = static_cast<size_t>(image.numel()) * sizeof(float);
    for (size_t i = 0; i < n; ++i) {
      fnv = (fnv ^ bytes[i]) * 0x100000001B3ull;
      mix = (mix ^ bytes[i]) * 0xFF51AFD7ED558CCDull;
      mix ^= mix >> 29;
    }
    return {fnv, mix};
  }

  bool cache_;
  std::unordered_map<Key, models::DiagonalGaussian, KeyHash> cached_;
};

// Whether a component folder holds a weights file (the decoder stages start one without from a draw).
bool has_weights(const fs::path& folder) {
  if (!fs::is_directory(folder)) return false;
  for (const auto& e : fs::directory_iterator(folder))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") return true;
  return false;
}

// The diffusers parts the vae or t2i stage reads; each component's weights when its folder has some.
StageModels decoder_models(const fs::path& root, data::StageKind kind) {
  const bool t2i = kind == data::StageKind::T2I;
  std::vector<std::string> missing;
  auto need = [&](const fs::path& p) {
    if (!fs::exists(root / p)) missing.push_back((root / p).string());
  };
  need("vae/config.json");
  if (t2i) {
    need("unet/config.json");
    need("scheduler/scheduler_config.json");
    need("text_encoder/config.json");
    need("tokenizer/vocab.json");
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += "\n    " + m;
    fail("train", std::string("the ") + data::stage_name(kind) + " stage needs these files of " + root.string() + ":" +
                      list + "\n  (a diffusers folder; configs without weights start those weights from a seeded draw)");
  }
  StageModels m;
  auto component = [&](const char* name, const char* stem, io::Json& config, io::TensorMap& weights) {
    const fs::path folder = root / name;
    config = io::read_json((folder / "config.json").string());
    if (has_weights(folder)) {
      weights = io::read_component_weights(folder.string(), {stem});
    } else {
      spdlog::info("{} has no weights: the {} starts from a seeded draw", folder.string(), name);
    }
  };
  component("vae", "diffusion_pytorch_model", m.vae_config, m.vae);
  if (t2i) {
    component("unet", "diffusion_pytorch_model", m.unet_config, m.unet);
    component("text_encoder", "model", m.text_encoder_config, m.text_encoder);
    m.scheduler_config = io::read_json((root / "scheduler" / "scheduler_config.json").string());
    m.tokenizer_dir = (root / "tokenizer").string();
  }
  return m;
}

// Pixels per latent cell of an AutoencoderKL: each down block but the last halves the side.
int64_t vae_scale(const io::Json& vae_config) {
  const auto blocks = vae_config.value("block_out_channels", std::vector<int64_t>{1, 1, 1, 1});
  return int64_t{1} << (blocks.size() - 1);
}

// The side of the diffusion targets: the UNet's latent side in pixels.
int64_t diffusion_target_side(const io::Json& unet_config, const io::Json& vae_config) {
  return io::config_value<int64_t>(unet_config, "sample_size", 64, "unet config") * vae_scale(vae_config);
}

}  // namespace

StageModels StageModels::from_folder(const std::string& dir, data::StageKind kind) {
  const fs::path root(dir);
  if (!fs::is_directory(root)) fail_setting("train", "model folder", "{} " + dir + " is not a folder");
  if (!data::is_kosmosg_stage(kind)) return decoder_models(root, kind);
  std::vector<std::string> missing;
  auto need = [&](const fs::path& p) {
    if (!fs::exists(p)) missing.push_back(p.string());
  };
  need(root / "kosmosg" / "config.json");
  // Stage 1 may start from the config alone (a model trained from nothing, as the shapes world's).
  const fs::path kosmosg_weights = root / "kosmosg" / "model.safetensors";
  if (kind != data::StageKind::LM) need(kosmosg_weights);
  if (kind == data::StageKind::Align) {
    need(root / "text_encoder" / "config.json");
    need(root / "tokenizer" / "vocab.json");
  }
  if (kind == data::StageKind::Instruct) {
    need(root / "unet" / "config.json");
    need(root / "vae" / "config.json");
    need(root / "scheduler" / "scheduler_config.json");
  }
  if (!missing.empty()) {
    std::string list;
    for (const auto& m : missing) list += "\n    " + m;
    fail("train", std::string("the ") + data::stage_name(kind) + " stage needs these files of " + dir + ":" + list +
                      (kind == data::StageKind::Align ? "\n  (the frozen CLIP text teacher comes from an SD1.5 folder's "
                                                        "text_encoder/ and tokenizer/: copy or link them in)"
                                                      : ""));
  }
  StageModels m;
  m.kosmosg_config = io::read_json((root / "kosmosg" / "config.json").string());
  if (fs::exists(kosmosg_weights))
    m.kosmosg = io::SafeTensors::open(kosmosg_weights.string()).tensors();
  else
    spdlog::info("{} has no model.safetensors: the MLLM, ViT and connector start from a seeded draw",
                 (root / "kosmosg").string());
  if (kind == data::StageKind::Align) {
    m.text_encoder_dir = (root / "text_encoder").string();
    m.tokenizer_dir = (root / "tokenizer").string();
  }
  if (kind == data::StageKind::Instruct) {
    m.unet_config = io::read_json((root / "unet" / "config.json").string());
    m.vae_config = io::read_json((root / "vae" / "config.json").string());
    m.scheduler_config = io::read_json((root / "scheduler" / "scheduler_config.json").string());
    m.unet = io::read_component_weights((root / "unet").string(), {"diffusion_pytorch_model"});
    m.vae = io::read_component_weights((root / "vae").string(), {"diffusion_pytorch_model"});
  }
  return m;
}

Stage::Stage(const StageOptions& options) : options_(options) { root_ = std::make_shared<torch::nn::Module>(); }

void Stage::select_trainable(const std::function<bool(const std::string&)>& is_trainable) {
  trainable_.clear();
  for (auto& item : root_->named_parameters()) {
    const std::string& name = item.key();
    at::Tensor& p = item.value();
    const bool train = is_trainable(name);
    p.set_requires_grad(train);
    if (train) trainable_.emplace_back(name, p);
  }
}

std::vector<ModuleSummary> Stage::summary() const {
  std::vector<ModuleSummary> rows;
  for (const auto& item : root_->named_parameters()) {
    const std::string& name = item.key();
    const at::Tensor& p = item.value();
    // Two name components ("gpt_model.decoder", "aligner.encoder_proj") make a readable table.
    size_t dot = name.find('.');
    if (dot != std::string::npos) dot = name.find('.', dot + 1);
    std::string module = name.substr(0, dot);
    // The ViT trains its last block only: one row per block and per other part.
    if (module == "img_model.visual") {
      const size_t block = name.find(".resblocks.");
      module = block != std::string::npos ? name.substr(0, name.find('.', block + 11))
                                          : name.substr(0, name.find('.', module.size() + 1));
    }
    if (rows.empty() || rows.back().module != module) rows.push_back({module, 0, 0});
    rows.back().parameters += p.numel();
    if (p.requires_grad()) rows.back().trainable += p.numel();
  }
  return rows;
}

io::TensorMap Stage::trainable_state() const {
  io::TensorMap out;
  for (const auto& [name, p] : trainable_) out.emplace(name, p.detach());
  if (out.count(kEmbedTokens)) out[kTiedHead] = out.at(kEmbedTokens);
  return out;
}

void Stage::load_trainable(const io::TensorMap& weights, const std::string& source) {
  torch::NoGradGuard no_grad;
  std::vector<std::string> problems;
  size_t used = 0;
  for (auto& [name, p] : trainable_) {
    auto it = weights.find(name);
    if (it == weights.end()) {
      problems.push_back("missing " + name);
      continue;
    }
    ++used;
    if (it->second.sizes() != p.sizes()) {
      problems.push_back(name + " has shape " + c10::str(it->second.sizes()) + ", expected " + c10::str(p.sizes()));
      continue;
    }
    p.copy_(it->second);
  }
  if (weights.count(kTiedHead) && weights.count(kEmbedTokens)) ++used;
  if (used != weights.size()) problems.push_back(std::to_string(weights.size() - used) + " tensors this stage does not train");
  if (!problems.empty()) {
    std::string list;
    for (const auto& p : problems) list += "\n    " + p;
    fail("train", source + " does not fit the stage's trainable weights:" + list);
  }
}

void Stage::train_mode() { root_->train(); }

namespace {

// What the three Kosmos-G stages share: the KosmosGmodel, its config, the MLLM forward.
class KosmosGStage : public Stage {
 public:
  void configure_samples(data::SampleOptions& options) const override {
    options.image_token_length = config_.connector.latent_query_num;
    options.image_size = config_.vision.image_size;
  }

  std::map<std::string, io::TensorMap> output_weights() const override {
    io::TensorMap out;
    for (const auto& [name, t] : io::state_dict(*kosmosg_)) out.emplace(name, t.detach());
    out[kTiedHead] = out.at(kEmbedTokens);
    return {{"kosmosg/model.safetensors", out}};
  }

 protected:
  KosmosGStage(const StageModels& models, const StageOptions& options)
      : Stage(options), config_(models::KosmosGConfig::from_json(models.kosmosg_config)) {
    kosmosg_ = models::KosmosGModel(config_);
  }

  // Switches the options' checkpointing on, then marks the trainable parameters.
  void select_trainable(const std::function<bool(const std::string&)>& is_trainable) {
    if (options_.gradient_checkpointing) kosmosg_->set_gradient_checkpointing(true);
    // The official stage 3 checkpoints the ViT blocks reentrantly: the last block's input needs no
    // gradient, so neither do its output and its weights.
    if (options_.official_vit_checkpoint) kosmosg_->img_model->set_gradient_checkpointing(true, /*reentrant_compat=*/true);
    Stage::select_trainable(is_trainable);
  }

  bool vit_trainable(const std::string& name) const {
    std::string rule = options_.no_freeze_layer;
    if (rule.empty()) rule = "resblocks." + std::to_string(config_.vision.layers - 1) + ",ln_post";
    size_t begin = 0;
    while (begin <= rule.size()) {
      size_t end = rule.find(',', begin);
      if (end == std::string::npos) end = rule.size();
      const std::string item = rule.substr(begin, end - begin);
      if (!item.empty() && name.find(item) != std::string::npos) return true;
      begin = end + 1;
    }
    return false;
  }

  // The MLLM hidden states [B, T, C] for a batch (image features in their slots).
  at::Tensor mllm_hidden(const data::Batch& batch, bool logits, at::Tensor* logits_out = nullptr) {
    const at::Tensor src = batch_tensor(batch.src_tokens, "src_tokens");
    const auto param = kosmosg_->gpt_model->decoder->embed_tokens->weight;
    at::Tensor features;
    if (batch.images.defined() && batch.images.numel() > 0)
      features = kosmosg_->image_embeddings(batch.images.to(param.device(), param.scalar_type()));
    at::Tensor mask = batch.img_gpt_input_mask.defined() ? batch.img_gpt_input_mask.to(param.device(), at::kBool)
                                                         : at::Tensor();
    auto out = kosmosg_->gpt_model(src.to(param.device()), features, mask, logits);
    if (logits_out) *logits_out = out.logits;
    return out.hidden;
  }

  models::KosmosGConfig config_;
  models::KosmosGModel kosmosg_{nullptr};
};

// Stage 1: next-token cross-entropy on the text positions (reference §6.7).
class LMStage : public KosmosGStage {
 public:
  LMStage(const StageModels& m, const StageOptions& o) : KosmosGStage(m, o) {
    // Without weights everything keeps its seeded draw. The aligner, when there is one, is carried
    // along untouched so the output stays a complete model folder; a stage-1 start has none yet.
    if (!m.kosmosg.empty()) {
      for (const char* prefix : {"gpt_model.", "img_model.", "img_connector."})
        if (!has_prefix(m.kosmosg, prefix))
          fail("train", std::string("the lm stage needs the ") + prefix + "* weights, which the model has none of");
      if (has_prefix(m.kosmosg, "aligner.encoder_proj.")) {
        kosmosg_->load(m.kosmosg, load_options("kosmosg"));
      } else {
        kosmosg_->gpt_model->load(models::strip_prefix(m.kosmosg, "gpt_model."), load_options("kosmosg (gpt_model.*)"));
        kosmosg_->img_model->load(models::strip_prefix(m.kosmosg, "img_model."), load_options("kosmosg (img_model.*)"));
        load_component(*kosmosg_->img_connector, m.kosmosg, "img_connector.", "kosmosg");
      }
    }
    for (const char* child : {"gpt_model", "img_model", "img_connector", "aligner"})
      root_->register_module(child, kosmosg_->named_children()[child]);
    select_trainable([&](const std::string& name) {
      return starts_with(name, "gpt_model.") || starts_with(name, "img_connector.") ||
             (starts_with(name, "img_model.") && vit_trainable(name));
    });
  }
  data::StageKind kind() const override { return data::StageKind::LM; }

  StageLoss forward(const data::Batch& batch, at::Generator) override {
    at::Tensor logits;
    mllm_hidden(batch, /*logits=*/true, &logits);
    const int64_t pad = config_.mllm.padding_idx;
    const at::Tensor target = batch_tensor(batch.target, "target").to(logits.device());
    at::Tensor scored = target.ne(pad);
    if (batch.gpt_loss_mask.defined()) scored = scored.logical_and(batch.gpt_loss_mask.to(logits.device(), at::kBool));
    const at::Tensor lprobs = at::log_softmax(logits.to(at::kFloat), -1);
    const at::Tensor nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1);
    StageLoss out;
    out.loss = nll.masked_select(scored).sum();
    out.sample_size = scored.sum().item<int64_t>();
    out.samples = target.size(0);
    if (out.sample_size == 0) fail("train", "an lm batch has no scored token (every loss-mask position is 0 or padding)");
    out.logs["loss"] = out.loss.item<double>() / static_cast<double>(out.sample_size);
    out.logs["tokens"] = static_cast<double>(out.sample_size);
    out.outputs["logits"] = logits;
    return out;
  }
};

// Stage 2: AlignerNet M and N against the frozen SD1.5 CLIP text encoder (reference §5.4).
class AlignStage : public KosmosGStage {
 public:
  AlignStage(const StageModels& m, const StageOptions& o) : KosmosGStage(m, o) {
    if (!has_prefix(m.kosmosg, "gpt_model."))
      fail("train", "the align stage needs the gpt_model.* weights (a stage-1 model), which the model has none of");
    aligner_ = models::Aligner(config_.aligner);
    kosmosg_->aligner = kosmosg_->replace_module(
        "aligner", models::AlignerEncoder(std::static_pointer_cast<models::AlignerEncoderImpl>(aligner_.ptr())));
    kosmosg_->gpt_model->load(models::strip_prefix(m.kosmosg, "gpt_model."), load_options("kosmosg (gpt_model.*)"));
    if (has_prefix(m.kosmosg, "img_model."))
      kosmosg_->img_model->load(models::strip_prefix(m.kosmosg, "img_model."), load_options("kosmosg (img_model.*)"));
    if (has_prefix(m.kosmosg, "img_connector.")) load_component(*kosmosg_->img_connector, m.kosmosg, "img_connector.", "kosmosg");
    // Stage 2 trains M and N from scratch (the constructor's torchscale initialisation) unless the
    // weights carry both.
    if (has_prefix(m.kosmosg, "aligner.decoder_proj.")) {
      io::TensorMap aligner_weights;
      for (const auto& [name, t] : models::strip_prefix(m.kosmosg, "aligner."))
        if (!starts_with(name, "clip_encoder.")) aligner_weights.emplace(name, t);
      io::load_weights(*aligner_, aligner_weights, load_options("kosmosg (aligner.*)"));
    }
    if (!m.text_encoder_dir.empty()) {
      teacher_ = models::load_clip_text_model(m.text_encoder_dir);
      clip_tokenizer_ = std::make_unique<text::CLIPTokenizer>(text::CLIPTokenizer::from_folder(m.tokenizer_dir));
      const int64_t width = teacher_->config().encoder.hidden_size;
      if (width != config_.aligner.embed_dim)
        fail("train", "the CLIP text teacher is " + std::to_string(width) + " wide but the aligner outputs " +
                          std::to_string(config_.aligner.embed_dim));
    }
    for (const char* child : {"gpt_model", "img_model", "img_connector", "aligner"})
      root_->register_module(child, kosmosg_->named_children()[child]);
    select_trainable([](const std::string& name) { return starts_with(name, "aligner."); });
  }
  data::StageKind kind() const override { return data::StageKind::Align; }

  StageLoss forward(const data::Batch& batch, at::Generator) override {
    if (!teacher_) fail("train", "the align stage has no CLIP text teacher");
    if (batch.captions.size() != static_cast<size_t>(batch.src_tokens.size(0)))
      fail("train", "the align stage needs one caption per row for the CLIP teacher");
    std::vector<int64_t> ids;
    for (const auto& caption : batch.captions) {
      auto row = clip_tokenizer_->encode(caption, static_cast<size_t>(config_.aligner.num_queries));
      ids.insert(ids.end(), row.begin(), row.end());
    }
    const auto param = aligner_->encoder_query;
    at::Tensor teacher;
    {
      torch::NoGradGuard no_grad;
      nn::AutocastGuard no_autocast(param.device().type(), at::kFloat);  // the frozen teacher stays float32
      const at::Tensor tokens = at::tensor(ids, at::TensorOptions().dtype(at::kLong))
                                    .view({static_cast<int64_t>(batch.captions.size()), -1})
                                    .to(param.device());
      teacher = teacher_->forward(tokens).last_hidden_state.to(param.scalar_type());
    }
    return forward_with_teacher(batch, teacher);
  }

  StageLoss forward_with_teacher(const data::Batch& batch, const at::Tensor& teacher) {
    const at::Tensor hidden = mllm_hidden(batch, /*logits=*/false);
    const at::Tensor pads = batch.src_tokens.to(hidden.device()).eq(config_.mllm.padding_idx);
    auto out = aligner_(hidden, pads, teacher.to(hidden.device(), hidden.scalar_type()));
    StageLoss loss;
    loss.loss = out.mse_loss + out.rec_loss;
    loss.sample_size = 1;
    loss.samples = static_cast<int64_t>(batch.captions.size());
    loss.logs["loss"] = loss.loss.item<double>();
    loss.logs["mse_loss"] = out.mse_loss.item<double>();
    loss.logs["rec_loss"] = out.rec_loss.item<double>();
    return loss;
  }

  void train_mode() override {
    Stage::train_mode();
    if (teacher_) teacher_->eval();
  }

 private:
  models::Aligner aligner_{nullptr};
  models::CLIPTextModel teacher_{nullptr};
  std::unique_ptr<text::CLIPTokenizer> clip_tokenizer_;
};

// A row's own generator (from its sample seed) when the batch carries one per row, else the
// update's `generator`.
at::Generator row_generator(const data::Batch& batch, int64_t rows, int64_t row, at::Generator generator,
                            uint64_t domain = kRowDrawDomain) {
  if (static_cast<int64_t>(batch.sample_seeds.size()) != rows) return generator;
  return at::detail::createCPUGenerator(data::mix_seeds({domain, batch.sample_seeds[row]}));
}

// Each row's draws for a diffusion stage: the posterior's standard normal, then the diffusion
// loss's noise, timestep and condition drop, in that order from the row's own generator. The two
// normals must be separate draws: were they one, the UNet would learn noise that is part of its
// target.
InstructDraws draw_rows(const DiffusionLoss& loss, const models::DiagonalGaussian& posterior, const data::Batch& batch,
                        at::Generator generator) {
  const int64_t rows = posterior.mean.size(0);
  std::vector<at::Tensor> vae_noise, noise, timesteps, random_p;
  for (int64_t b = 0; b < rows; ++b) {
    at::Generator row = row_generator(batch, rows, b, generator);
    const at::Tensor mean = posterior.mean.narrow(0, b, 1);
    vae_noise.push_back(at::randn(mean.sizes(), row, at::TensorOptions().dtype(at::kFloat)).to(mean.options()));
    auto d = loss.draw(mean, row);
    noise.push_back(d.noise);
    timesteps.push_back(d.timesteps);
    random_p.push_back(d.random_p);
  }
  return {at::cat(vae_noise), at::cat(noise), at::cat(timesteps), at::cat(random_p)};
}

// The diffusion target of a posterior (before scaling): its sample with `vae_noise`, or its mean.
at::Tensor target_latents(const models::DiagonalGaussian& posterior, const at::Tensor& vae_noise,
                          const StageOptions& options) {
  return options.latents_from_mean ? posterior.mean : posterior.sample(vae_noise);
}

// Stage 3: score distillation through the frozen UNet (reference §6.5).
class InstructStage : public KosmosGStage {
 public:
  InstructStage(const StageModels& m, const StageOptions& o)
      : KosmosGStage(m, o),
        unet_(models::UNet2DConditionConfig::from_json(require_config(m.unet_config, "unet"))),
        vae_(models::AutoencoderKLConfig::from_json(require_config(m.vae_config, "vae"))),
        loss_(unet_, diffusion::DDPMTraining(require_config(m.scheduler_config, "scheduler")), o.condition_drop_rate,
              o.frozen_dtype, /*unet_trains=*/false, o.snr_gamma, o.noise_offset),
        targets_(o.cache_latents),
        target_size_(diffusion_target_side(m.unet_config, m.vae_config)) {
    std::vector<std::string> missing;
    for (const char* prefix : {"gpt_model.", "img_model.", "img_connector.", "aligner.encoder_proj."})
      if (!has_prefix(m.kosmosg, prefix)) missing.push_back(std::string(prefix) + "*");
    if (m.unet.empty()) missing.push_back("the UNet (unet/)");
    if (m.vae.empty()) missing.push_back("the VAE (vae/)");
    if (!missing.empty()) {
      std::string list;
      for (const auto& s : missing) list += "\n    " + s;
      fail("train", "the instruct stage needs weights the model does not have (run the align stage first for "
                    "aligner.*):" + list);
    }
    io::LoadOptions kosmosg_load = load_options("kosmosg");
    kosmosg_->load(m.kosmosg, kosmosg_load);
    io::load_weights(*unet_, m.unet, load_options("unet"));
    io::load_weights(*vae_, m.vae, load_options("vae"));
    for (const char* child : {"gpt_model", "img_model", "img_connector", "aligner"})
      root_->register_module(child, kosmosg_->named_children()[child]);
    if (o.gradient_checkpointing) unet_->set_gradient_checkpointing(true);
    unet_->to(o.frozen_dtype);
    vae_->to(o.frozen_dtype);
    root_->register_module("diffusion_unet", holder("unet", unet_.ptr()));
    root_->register_module("vae", holder("vae", vae_.ptr()));
    select_trainable([&](const std::string& name) {
      return starts_with(name, "gpt_model.") || starts_with(name, "img_connector.") || starts_with(name, "aligner.") ||
             (starts_with(name, "img_model.") && vit_trainable(name));
    });
  }
  data::StageKind kind() const override { return data::StageKind::Instruct; }

  void configure_samples(data::SampleOptions& options) const override {
    KosmosGStage::configure_samples(options);
    options.target_size = target_size_;
  }

  void train_mode() override {
    Stage::train_mode();
    unet_->eval();
    vae_->eval();
  }

  StageLoss forward(const data::Batch& batch, at::Generator generator) override {
    const models::DiagonalGaussian posterior = encode_targets(batch);
    return forward_with_draws(batch, posterior, draw_rows(loss_, posterior, batch, generator));
  }

  models::DiagonalGaussian encode_targets(const data::Batch& batch) {
    const auto param = kosmosg_->gpt_model->decoder->embed_tokens->weight;
    const at::Tensor images = batch_tensor(batch.target_images, "target images (stage 3 needs a target per sample)");
    return targets_.encode(vae_, images, param.device(), options_.frozen_dtype);
  }

  StageLoss forward_with_draws(const data::Batch& batch, const models::DiagonalGaussian& posterior,
                               const InstructDraws& draws) {
    const at::Tensor hidden = mllm_hidden(batch, /*logits=*/false);
    const at::Tensor src = batch.src_tokens.to(hidden.device());
    const at::Tensor condition = kosmosg_->aligner(hidden, src.eq(config_.mllm.padding_idx));
    // The null embedding is computed with gradients, in training mode, as upstream.
    const at::Tensor null_tokens = at::full({1, 1}, config_.null_token, src.options());
    const at::Tensor null_hidden = kosmosg_->gpt_model(null_tokens, at::Tensor(), at::Tensor(), false).hidden;
    const at::Tensor null_condition = kosmosg_->aligner(null_hidden, at::zeros({1, 1}, src.options().dtype(at::kBool)));
    at::Tensor latents;
    {
      torch::NoGradGuard no_grad;
      latents = target_latents(posterior, draws.vae_noise, options_) * vae_->config().scaling_factor;
    }
    auto out = loss_.forward(latents, condition, null_condition, {draws.noise, draws.timesteps, draws.random_p});
    StageLoss loss;
    loss.loss = out.loss;
    loss.sample_size = batch.nsentences > 0 ? batch.nsentences : src.size(0);
    loss.samples = src.size(0);
    loss.logs["loss"] = out.loss.item<double>() / static_cast<double>(loss.sample_size);
    loss.outputs["latents"] = latents;
    loss.outputs["noise"] = draws.noise;
    return loss;
  }

 private:
  static const io::Json& require_config(const io::Json& config, const char* what) {
    if (!config.is_object() || config.empty())
      fail("train", std::string("the instruct stage needs the ") + what + " config, which the model does not have");
    return config;
  }

  models::UNet2DConditionModel unet_;
  models::AutoencoderKL vae_;
  DiffusionLoss loss_;
  TargetEncoder targets_;
  int64_t target_size_;
};

// The posterior's sample with each row's standard normal draw.
at::Tensor sample_posterior(const models::DiagonalGaussian& posterior, const data::Batch& batch, at::Generator generator) {
  const int64_t rows = posterior.mean.size(0);
  std::vector<at::Tensor> noise;
  for (int64_t b = 0; b < rows; ++b) {
    const at::Tensor mean = posterior.mean.narrow(0, b, 1);
    noise.push_back(at::randn(mean.sizes(), row_generator(batch, rows, b, generator), at::TensorOptions().dtype(at::kFloat))
                        .to(mean.device(), mean.scalar_type()));
  }
  return posterior.sample(at::cat(noise));
}

// The decoder stages' shared part: a component's weights loaded when the model folder has them,
// kept from the seeded draw of its construction otherwise (and then written to the output).
class DecoderStage : public Stage {
 protected:
  using Stage::Stage;

  void load_or_keep_draw(torch::nn::Module& module, const io::TensorMap& weights, const std::string& component) {
    if (weights.empty()) {
      drawn_.push_back(component);
      return;
    }
    io::load_weights(module, weights, load_options(component));
  }
  bool drawn(const std::string& component) const {
    return std::find(drawn_.begin(), drawn_.end(), component) != drawn_.end();
  }
  // `module`'s weights as the component folder's file stores them.
  static io::TensorMap component_state(const torch::nn::Module& module) {
    io::TensorMap out;
    for (const auto& [name, t] : io::state_dict(module)) out.emplace(name, t.detach().to(at::kFloat));
    return out;
  }

 private:
  std::vector<std::string> drawn_;
};

// The AutoencoderKL alone: L1 reconstruction of the target image (per-pixel mean) plus kl_weight ×
// the posterior's KL divergence to N(0, I), as the LDM autoencoder without its LPIPS and GAN parts.
class VaeStage : public DecoderStage {
 public:
  VaeStage(const StageModels& m, const StageOptions& o)
      : DecoderStage(o), vae_(models::AutoencoderKLConfig::from_json(m.vae_config)), vae_config_(m.vae_config) {
    load_or_keep_draw(*vae_, m.vae, "vae");
    root_->register_module("vae", vae_.ptr());
    select_trainable([](const std::string&) { return true; });
    const int64_t side = o.crop_size, image = vae_->config().sample_size, scale = vae_scale(m.vae_config);
    if (side != 0 && (side > image || side % scale != 0))
      fail("train", "crop_size is " + std::to_string(side) + ", expected a multiple of the VAE's downscale " +
                        std::to_string(scale) + " no larger than its " + std::to_string(image) +
                        " pixel images (vae/config.json sample_size)");
  }
  data::StageKind kind() const override { return data::StageKind::Vae; }

  void configure_samples(data::SampleOptions& options) const override { options.target_size = vae_->config().sample_size; }

  std::map<std::string, io::TensorMap> output_weights() const override {
    return {{"vae/diffusion_pytorch_model.safetensors", component_state(*vae_)}};
  }

  std::map<std::string, io::Json> output_configs() const override {
    if (!options_.fit_scaling_factor || latent_batches_ == 0) return {};
    const double variance = latent_moments_[1] - latent_moments_[0] * latent_moments_[0];
    if (!(variance > 0)) fail("train", "the latents have no variance: the VAE cannot fit a scaling_factor");
    io::Json config = vae_config_;
    config["scaling_factor"] = 1.0 / std::sqrt(variance);
    return {{"vae/config.json", config}};
  }

  io::Json state() const override {
    if (!options_.fit_scaling_factor) return nullptr;
    return {{"latent_moments", latent_moments_}, {"latent_batches", latent_batches_}};
  }
  void load_state(const io::Json& state) override {
    if (!options_.fit_scaling_factor || !state.contains("latent_moments")) return;
    latent_moments_ = state.at("latent_moments").get<std::array<double, 2>>();
    latent_batches_ = state.at("latent_batches").get<int64_t>();
  }

  StageLoss forward(const data::Batch& batch, at::Generator generator) override {
    const auto param = vae_->encoder->conv_in->weight;
    const at::Tensor images = crop(
        batch_tensor(batch.target_images, "target images (the vae stage needs a target per sample)"), batch, generator)
                                  .to(param.device());
    const models::DiagonalGaussian posterior = vae_->encode(images);
    const at::Tensor latents = sample_posterior(posterior, batch, generator);
    if (options_.fit_scaling_factor) track_latent_moments(latents);
    const at::Tensor reconstruction = vae_->decode(latents);
    const at::Tensor rec = (reconstruction.to(at::kFloat) - images.to(at::kFloat)).abs().flatten(1).mean(1);
    const at::Tensor mean = posterior.mean.to(at::kFloat), logvar = posterior.logvar.to(at::kFloat);
    const at::Tensor kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1);
    StageLoss out;
    out.loss = (rec + options_.kl_weight * kl).sum();
    out.samples = images.size(0);
    out.sample_size = out.samples;
    const double rows = static_cast<double>(out.samples);
    out.logs["loss"] = out.loss.item<double>() / rows;
    out.logs["rec_loss"] = rec.sum().item<double>() / rows;
    out.logs["kl"] = kl.sum().item<double>() / rows;
    out.outputs["reconstruction"] = reconstruction;
    out.outputs["latents"] = latents;
    return out;
  }

 private:
  // Each row's crop_size² window at a uniformly drawn position; the images themselves without crop_size.
  at::Tensor crop(const at::Tensor& images, const data::Batch& batch, at::Generator generator) const {
    const int64_t side = options_.crop_size;
    if (side == 0) return images;
    const int64_t rows = images.size(0), down = images.size(2) - side + 1, across = images.size(3) - side + 1;
    std::vector<at::Tensor> windows;
    for (int64_t b = 0; b < rows; ++b) {
      const int64_t position =
          at::randint(0, down * across, {1}, row_generator(batch, rows, b, generator, kCropDomain), at::kLong)
              .item<int64_t>();
      windows.push_back(images.narrow(0, b, 1).narrow(2, position / across, side).narrow(3, position % across, side));
    }
    return at::cat(windows);
  }

  // The first and second moments of the latents: the running mean over the first
  // kLatentWindow batches, an exponential average over that many afterwards, so that the
  // fitted scale follows the VAE as it trains.
  void track_latent_moments(const at::Tensor& latents) {
    constexpr double kLatentWindow = 100;
    const at::Tensor z = latents.detach().to(at::kDouble);
    const std::array<double, 2> batch{z.mean().item<double>(), z.square().mean().item<double>()};
    ++latent_batches_;
    const double weight = 1.0 / std::min(static_cast<double>(latent_batches_), kLatentWindow);
    for (size_t i = 0; i < batch.size(); ++i) latent_moments_[i] += weight * (batch[i] - latent_moments_[i]);
  }

  models::AutoencoderKL vae_;
  io::Json vae_config_;
  std::array<double, 2> latent_moments_{0, 0};
  int64_t latent_batches_ = 0;
};

// The UNet with a CLIP text encoder (trained with it or frozen) and a frozen VAE: the ε-prediction
// loss of Stable Diffusion's text-to-image training, captions dropped to the empty prompt's
// embedding for condition_drop_rate of the rows (classifier-free guidance).
class T2IStage : public DecoderStage {
 public:
  T2IStage(const StageModels& m, const StageOptions& o)
      : DecoderStage(o),
        unet_(models::UNet2DConditionConfig::from_json(m.unet_config)),
        vae_(models::AutoencoderKLConfig::from_json(m.vae_config)),
        text_encoder_(models::CLIPTextConfig::from_json(m.text_encoder_config, "text_encoder/config.json")),
        clip_tokenizer_(text::CLIPTokenizer::from_folder(m.tokenizer_dir)),
        loss_(unet_, diffusion::DDPMTraining(m.scheduler_config), o.condition_drop_rate, c10::kFloat,
              /*unet_trains=*/true, o.snr_gamma, o.noise_offset),
        targets_(o.cache_latents),
        target_size_(diffusion_target_side(m.unet_config, m.vae_config)) {
    const int64_t width = text_encoder_->config().encoder.hidden_size;
    for (const int64_t dim : unet_->config().cross_attention_dim)
      if (dim != width)
        fail("train", "the text encoder is " + std::to_string(width) + " wide but the UNet's cross_attention_dim is " +
                          std::to_string(dim) + " (unet/config.json)");
    load_or_keep_draw(*unet_, m.unet, "unet");
    load_or_keep_draw(*vae_, m.vae, "vae");
    load_or_keep_draw(*text_encoder_, m.text_encoder, "text_encoder");
    if (o.gradient_checkpointing) unet_->set_gradient_checkpointing(true);
    vae_->to(o.frozen_dtype);
    root_->register_module("unet", unet_.ptr());
    root_->register_module("vae", vae_.ptr());
    root_->register_module("text_encoder", text_encoder_.ptr());
    select_trainable([&](const std::string& name) {
      return starts_with(name, "unet.") || (o.train_text_encoder && starts_with(name, "text_encoder."));
    });
  }
  data::StageKind kind() const override { return data::StageKind::T2I; }

  void configure_samples(data::SampleOptions& options) const override { options.target_size = target_size_; }

  // The UNet; the text encoder when it trained or was drawn; the VAE when it was drawn, so that
  // the output is a complete folder.
  std::map<std::string, io::TensorMap> output_weights() const override {
    std::map<std::string, io::TensorMap> out{{"unet/diffusion_pytorch_model.safetensors", component_state(*unet_)}};
    if (options_.train_text_encoder || drawn("text_encoder"))
      out.emplace("text_encoder/model.safetensors", component_state(*text_encoder_));
    if (drawn("vae")) out.emplace("vae/diffusion_pytorch_model.safetensors", component_state(*vae_));
    return out;
  }

  void train_mode() override {
    Stage::train_mode();
    vae_->eval();
    if (!options_.train_text_encoder) text_encoder_->eval();
  }

  StageLoss forward(const data::Batch& batch, at::Generator generator) override {
    const at::Tensor images = batch_tensor(batch.target_images, "target images (the t2i stage needs a target per sample)");
    const int64_t rows = images.size(0);
    if (static_cast<int64_t>(batch.captions.size()) != rows)
      fail("train", "the t2i stage needs one caption per row for the text encoder");
    const auto param = unet_->conv_in->weight;
    const auto posterior = targets_.encode(vae_, images, param.device(), options_.frozen_dtype);
    const InstructDraws draws = draw_rows(loss_, posterior, batch, generator);
    at::Tensor latents;
    {
      torch::NoGradGuard no_grad;
      latents = target_latents(posterior, draws.vae_noise, options_) * vae_->config().scaling_factor;
    }
    const DiffusionLossDraws loss_draws{draws.noise, draws.timesteps, draws.random_p};
    // Rows denoised under a hard negative too: those with one whose condition was not dropped.
    std::vector<int64_t> negative_rows;
    if (options_.negative_weight > 0 && !batch.negatives.empty()) {
      if (static_cast<int64_t>(batch.negatives.size()) != rows)
        fail("train", "the t2i batch has " + std::to_string(batch.negatives.size()) + " negatives for " +
                          std::to_string(rows) + " rows");
      const at::Tensor dropped = loss_.dropped(loss_draws).to(at::kCPU);
      const auto is_dropped = dropped.accessor<bool, 1>();
      for (int64_t b = 0; b < rows; ++b)
        if (!batch.negatives[b].empty() && !is_dropped[b]) negative_rows.push_back(b);
    }
    std::vector<std::string> texts = batch.captions;
    texts.push_back("");  // the null condition: the empty prompt's embedding
    for (const int64_t b : negative_rows) texts.push_back(batch.negatives[b]);
    const at::Tensor encoded = encode_text(texts, param.device());
    auto out = loss_.forward(latents, encoded.narrow(0, 0, rows), encoded.narrow(0, rows, 1), loss_draws);
    StageLoss loss;
    loss.loss = out.loss;
    loss.logs["diffusion_loss"] = out.loss.item<double>() / static_cast<double>(rows);
    // Every rank logs the same keys (the trainer all-reduces them): 0 for a batch with no negative.
    if (options_.negative_weight > 0) loss.logs["negative_loss"] = loss.logs["negative_right"] = 0.0;
    if (!negative_rows.empty()) {
      const auto count = static_cast<int64_t>(negative_rows.size());
      const at::Tensor index = at::tensor(negative_rows, at::TensorOptions().dtype(at::kLong));
      const at::Tensor negative =
          loss_.rows_loss(out, latents, loss_draws, index, encoded.narrow(0, rows + 1, count));
      const at::Tensor positive = out.sample_loss.index_select(0, index.to(out.sample_loss.device()));
      const at::Tensor contrast = at::softplus((positive - negative) / options_.negative_temperature);
      loss.loss = loss.loss + options_.negative_weight * contrast.sum();
      loss.logs["negative_loss"] = contrast.mean().item<double>();
      loss.logs["negative_right"] = (negative > positive).to(at::kDouble).mean().item<double>();
    }
    loss.samples = rows;
    loss.sample_size = rows;
    loss.logs["loss"] = loss.loss.item<double>() / static_cast<double>(rows);
    loss.outputs["latents"] = latents;
    loss.outputs["noise"] = draws.noise;
    return loss;
  }

 private:
  // last_hidden_state of the CLIP text encoder for `texts`, with gradients when it trains.
  at::Tensor encode_text(const std::vector<std::string>& texts, const c10::Device& device) {
    const auto length = static_cast<size_t>(text_encoder_->config().max_position_embeddings);
    std::vector<int64_t> ids;
    for (const auto& t : texts) {
      auto row = clip_tokenizer_.encode(t, length);
      ids.insert(ids.end(), row.begin(), row.end());
    }
    const at::Tensor tokens =
        at::tensor(ids, at::TensorOptions().dtype(at::kLong)).view({static_cast<int64_t>(texts.size()), -1}).to(device);
    if (options_.train_text_encoder) return text_encoder_->forward(tokens).last_hidden_state;
    torch::NoGradGuard no_grad;
    nn::AutocastGuard no_autocast(device.type(), at::kFloat);  // the frozen encoder stays float32
    return text_encoder_->forward(tokens).last_hidden_state;
  }

  models::UNet2DConditionModel unet_;
  models::AutoencoderKL vae_;
  models::CLIPTextModel text_encoder_;
  text::CLIPTokenizer clip_tokenizer_;
  DiffusionLoss loss_;
  TargetEncoder targets_;
  int64_t target_size_;
};

}  // namespace

std::unique_ptr<Stage> make_stage(data::StageKind kind, const StageModels& models, const StageOptions& options) {
  switch (kind) {
    case data::StageKind::LM: return std::make_unique<LMStage>(models, options);
    case data::StageKind::Align: return std::make_unique<AlignStage>(models, options);
    case data::StageKind::Instruct: return std::make_unique<InstructStage>(models, options);
    case data::StageKind::Vae: return std::make_unique<VaeStage>(models, options);
    case data::StageKind::T2I: return std::make_unique<T2IStage>(models, options);
  }
  fail("train", "unknown stage");
}

StageLoss align_forward_with_teacher(Stage& stage, const data::Batch& batch, const at::Tensor& teacher) {
  auto* align = dynamic_cast<AlignStage*>(&stage);
  if (!align) fail("train", "align_forward_with_teacher needs the align stage");
  return align->forward_with_teacher(batch, teacher);
}

StageLoss instruct_forward_with_draws(Stage& stage, const data::Batch& batch, const InstructDraws& draws) {
  auto* instruct = dynamic_cast<InstructStage*>(&stage);
  if (!instruct) fail("train", "instruct_forward_with_draws needs the instruct stage");
  return instruct->forward_with_draws(batch, instruct->encode_targets(batch), draws);
}

}  // namespace kosmosg::train
