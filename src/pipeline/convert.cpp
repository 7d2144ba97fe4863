#include "kosmosg/pipeline/convert.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <filesystem>
#include <functional>
#include <fstream>

#include "kosmosg/error.h"
#include "kosmosg/io/builtin_configs.h"
#include "kosmosg/io/file.h"
#include "kosmosg/io/safetensors.h"
#include "kosmosg/io/torch_checkpoint.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/kosmosg.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/models/vae.h"
#include "models/config_checks.h"

namespace kosmosg::pipeline {
namespace {

namespace fs = std::filesystem;
constexpr const char* kOp = "convert";
// The output is written into `<out>.partial-<pid>` beside it and renamed into place when complete.
constexpr const char* kStagingInfix = ".partial-";

bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// `override`'s value for `key` if present, else `fallback`'s, else `official`.
io::Json pick(const io::Json& override, const io::Json& fallback, const std::string& key,
              const std::string& fallback_key, const io::Json& official) {
  if (override.is_object() && override.contains(key) && !override[key].is_null()) return override[key];
  if (fallback.is_object() && fallback.contains(fallback_key) && !fallback[fallback_key].is_null())
    return fallback[fallback_key];
  return official;
}

// Checks the shape of a sizes file before any value is used: an object of sections, each an
// object; the Kosmos-G sections hold positive integers (mlp_ratio a positive number), except
// the "official" notes beside them. The diffusers sections are checked by their configs.
void check_sizes(const io::Json& sizes, const std::string& file) {
  if (!sizes.is_object()) fail_setting(kOp, "sizes file", "{} " + file + ": expected a JSON object, found " + io::brief(sizes));
  for (const char* section : {"mllm", "vision", "connector", "aligner", "unet", "vae", "scheduler"}) {
    const auto it = sizes.find(section);
    if (it == sizes.end() || it->is_null()) continue;
    if (!it->is_object())
      fail_setting(kOp, "sizes file", "{} " + file + ": '" + section + "' is " + io::brief(*it) + ", expected an object");
    const std::string name(section);
    if (name == "unet" || name == "vae" || name == "scheduler") continue;
    for (auto entry = it->begin(); entry != it->end(); ++entry) {
      if (entry.key() == "official") continue;
      const io::Json& v = entry.value();
      int64_t integer = 0;
      const bool ok = entry.key() == "mlp_ratio"
                          ? v.is_number() && v.get<double>() > 0 && v.get<double>() <= models::detail::kMaxConfigSize
                          : io::detail::to_integer(v, integer) && integer > 0 && integer <= models::detail::kMaxConfigSize;
      if (!ok)
        fail_setting(kOp, "sizes file", "{} " + file + ": '" + name + "." + entry.key() + "' is " + io::brief(v) + ", expected a " +
                      (entry.key() == "mlp_ratio" ? "positive number" : "positive integer") + " of at most " +
                      std::to_string(models::detail::kMaxConfigSize));
    }
  }
}

// The conditioning model's config: the sizes file first, then the checkpoint's own model
// arguments, then the official values.
io::Json kosmosg_config(const io::Json& sizes, const io::Json& cfg_model, int64_t vocab_size) {
  const io::Json official = io::builtin_config("kosmosg/full.json");
  const io::Json none = io::Json::object();
  const io::Json s_mllm = sizes.value("mllm", none), s_vision = sizes.value("vision", none),
                 s_conn = sizes.value("connector", none), s_align = sizes.value("aligner", none);
  io::Json config = official;
  auto& mllm = config["mllm"];
  mllm["decoder_layers"] = pick(s_mllm, cfg_model, "layers", "decoder_layers", official["mllm"]["decoder_layers"]);
  mllm["decoder_embed_dim"] = pick(s_mllm, cfg_model, "width", "decoder_embed_dim", official["mllm"]["decoder_embed_dim"]);
  mllm["decoder_attention_heads"] = pick(s_mllm, cfg_model, "heads", "decoder_attention_heads", official["mllm"]["decoder_attention_heads"]);
  mllm["decoder_ffn_embed_dim"] = pick(s_mllm, cfg_model, "ffn", "decoder_ffn_embed_dim", official["mllm"]["decoder_ffn_embed_dim"]);
  mllm["vocab_size"] = vocab_size;
  const double width = io::config_value<double>(mllm, "decoder_embed_dim", 0.0, "converted config");
  mllm["embed_scale"] = std::sqrt(std::max(width, 0.0));

  auto& vision = config["vision"];
  for (const char* key : {"image_size", "patch_size", "width", "layers", "mlp_ratio"})
    vision[key] = pick(s_vision, none, key, key, official["vision"][key]);
  if (s_vision.contains("heads")) {
    vision["heads"] = s_vision["heads"];
    vision["head_width"] = vision["width"].get<int64_t>() / s_vision["heads"].get<int64_t>();
  }

  auto& conn = config["connector"];
  conn["input_dim"] = vision["width"];
  conn["output_dim"] = mllm["decoder_embed_dim"];
  conn["latent_query_num"] = pick(s_conn, cfg_model, "latent_query_num", "latent_query_num", official["connector"]["latent_query_num"]);
  conn["decoder_attention_heads"] = pick(s_conn, none, "heads", "heads", mllm["decoder_attention_heads"]);
  config["image_token_length"] = conn["latent_query_num"];

  auto& aligner = config["aligner"];
  aligner["input_dim"] = mllm["decoder_embed_dim"];
  const std::pair<const char*, std::vector<const char*>> aligner_keys[] = {
      {"width", {"encoder_embed_dim", "decoder_embed_dim"}},
      {"heads", {"encoder_attention_heads", "decoder_attention_heads"}},
      {"encoder_layers", {"encoder_layers"}},
      {"decoder_layers", {"decoder_layers"}},
      {"encoder_ffn", {"encoder_ffn_embed_dim"}},
      {"decoder_ffn", {"decoder_ffn_embed_dim"}},
      {"table_length", {"max_positions"}},
      {"query_num", {"num_queries"}},
  };
  for (const auto& [size_key, config_keys] : aligner_keys)
    if (s_align.contains(size_key))
      for (const char* k : config_keys) aligner[k] = s_align[size_key];
  return config;
}

io::TensorMap with_prefix_stripped(const io::TensorMap& all, const std::string& prefix) {
  io::TensorMap out;
  for (const auto& [name, t] : all)
    if (starts_with(name, prefix)) out.emplace(name.substr(prefix.size()), t);
  return out;
}

io::TensorMap stored(const io::TensorMap& tensors, bool float32) {
  io::TensorMap out;
  for (const auto& [name, t] : tensors)
    out.emplace(name, float32 && t.is_floating_point() ? t.to(at::kFloat) : t);
  return out;
}

void write_json(const fs::path& path, const io::Json& json) {
  io::write_text_atomically(path.string(), json.dump(2) + "\n");
}

void reuse_component(const fs::path& sd15, const std::string& part, const fs::path& out) {
  const fs::path src = sd15 / part;
  if (!fs::is_directory(src)) fail_setting(kOp, "sd15 folder", "{} " + sd15.string() + " has no " + part + "/ folder");
  fs::create_directories(out / part);
  for (const auto& e : fs::directory_iterator(src))
    if (e.is_regular_file()) io::link_or_copy(e.path().string(), (out / part / e.path().filename()).string());
}

// Builds the diffusers component from `config`, loads `weights` strictly (so a wrong config or a
// truncated checkpoint fails here), then writes config.json and the weights.
template <typename Module, typename Config>
void write_component(const fs::path& dir, const io::Json& config, const io::TensorMap& weights,
                     const std::string& source, bool float32) {
  auto module = models::detail::build_module<Module>(Config::from_json(config), dir.filename().string() + " config");
  io::LoadOptions load;
  load.source_name = source;
  io::load_weights(*module, weights, load);
  fs::create_directories(dir);
  write_json(dir / "config.json", config);
  io::save_safetensors((dir / "diffusion_pytorch_model.safetensors").string(), stored(weights, float32),
                       {{"format", "pt"}, {"source", source}});
}

// Removes `<out>.partial-<pid>` folders left by conversions that were killed (their process is
// gone); a conversion still running keeps its own.
void remove_stale_staging(const fs::path& out) {
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  const std::string prefix = out.filename().string() + kStagingInfix;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    pid_t pid = 0;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
    if (digits.empty() || error != std::errc() || end != digits.data() + digits.size() || pid <= 0) continue;
    if (::kill(pid, 0) != 0 && errno == ESRCH) {
      spdlog::info("removing {}, left by an interrupted conversion", entry.path().string());
      fs::remove_all(entry.path(), ec);
    }
  }
}

io::Json merged(io::Json base, const io::Json& overrides) {
  if (overrides.is_object())
    for (auto it = overrides.begin(); it != overrides.end(); ++it) base[it.key()] = it.value();
  return base;
}

// An output folder must not exist (or be empty), and the folder it goes into must exist: as
// generate's --out, nothing is created above it.
void check_output_folder(const fs::path& out, const char* op) {
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out)))
    fail(op, "output folder " + out.string() + " already exists and is not empty");
  const fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  if (!fs::is_directory(parent))
    fail(op, "the folder " + parent.string() + " that would hold " + out.string() + " does not exist");
}

// Runs `fill` on `<out>.partial-<pid>` and renames it to `out` when complete; on any error
// nothing is left behind.
void write_staged(const fs::path& out, const std::function<void(const fs::path&)>& fill) {
  remove_stale_staging(out);
  const fs::path staging = out.parent_path() / (out.filename().string() + kStagingInfix + std::to_string(::getpid()));
  fs::remove_all(staging);
  try {
    fs::create_directories(staging);
    fill(staging);
    if (fs::exists(out)) fs::remove(out);  // an empty folder, checked before
    fs::rename(staging, out);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(staging, ec);
    throw;
  }
}

}  // namespace

ConvertReport convert_checkpoint(const ConvertOptions& options) {
  const fs::path out(options.out_dir);
  check_output_folder(out, kOp);
  io::require_regular_file(options.checkpoint, kOp);
  const fs::path tokenizer_dir = options.tokenizer_dir ? fs::path(*options.tokenizer_dir)
                                                       : fs::path(options.checkpoint).parent_path();
  for (const char* file : {"sentencepiece.bpe.model", "dict.txt"}) {
    std::error_code ec;
    if (!fs::exists(tokenizer_dir / file, ec))
      fail_setting(kOp, "tokenizer folder",
                   (tokenizer_dir / file).string() + " not found: the official tokenizer files are needed (give the {})");
    io::require_regular_file((tokenizer_dir / file).string(), kOp);
  }
  io::Json sizes = io::Json::object();
  if (options.sizes_file) {
    sizes = io::read_json(*options.sizes_file);
    check_sizes(sizes, *options.sizes_file);
  }

  const auto checkpoint = io::read_fairseq_checkpoint(options.checkpoint);
  const io::TensorMap& state = checkpoint.model;
  ConvertReport report;
  const bool has_unet = std::any_of(state.begin(), state.end(), [](const auto& e) { return starts_with(e.first, "diffusion_unet.unet."); });
  const bool has_aligner_n = state.count("aligner.decoder_query") > 0;
  const bool has_aligner = state.count("aligner.encoder_query") > 0;
  report.stage = has_unet ? "final" : has_aligner_n ? "stage2" : "stage1";
  auto embed = state.find("gpt_model.decoder.embed_tokens.weight");
  if (embed == state.end())
    fail(kOp, options.checkpoint + " is not a Kosmos-G checkpoint: gpt_model.decoder.embed_tokens.weight is missing");
  if (!has_unet && !options.sd15_dir)
    fail_setting(kOp, "sd15 folder", options.checkpoint + " holds no UNet and VAE (a " + report.stage +
                                         " checkpoint): give the {} with a Stable Diffusion 1.5 folder");

  const io::Json cfg_model = checkpoint.cfg.is_object() ? checkpoint.cfg.value("model", io::Json::object()) : io::Json::object();
  const io::Json config = kosmosg_config(sizes, cfg_model, embed->second.size(0));

  // The conditioning model: everything but the frozen decoder, minus what carries no information.
  io::TensorMap kosmosg_weights;
  for (const auto& [name, t] : state) {
    if (!(starts_with(name, "gpt_model.") || starts_with(name, "img_model.") || starts_with(name, "img_connector.") ||
          starts_with(name, "aligner.")))
      continue;
    if (ends_with(name, "embed_positions._float_tensor") || ends_with(name, "self_attn_sope.scale") ||
        name == "gpt_model.decoder.output_projection.weight")
      continue;
    if (starts_with(name, "img_model.visual.transformer.resblocks.") && name.find(".attn.") != std::string::npos) continue;
    kosmosg_weights.emplace(name, t);
  }
  {
    auto model = models::detail::build_module<models::KosmosGModel>(
        models::KosmosGConfig::from_json(config, "converted config"), "converted config");
    io::LoadOptions load;
    load.source_name = options.checkpoint;
    load.strict = has_aligner;  // a stage-1 checkpoint has no aligner yet
    model->load(kosmosg_weights, load);
  }

  write_staged(out, [&](const fs::path& staging) {
    fs::create_directories(staging / "kosmosg");
    io::save_safetensors((staging / "kosmosg" / "model.safetensors").string(), stored(kosmosg_weights, options.float32),
                         {{"format", "pt"},
                          {"source", fs::path(options.checkpoint).filename().string()},
                          {"stage", report.stage},
                          {"tied", "gpt_model.decoder.output_projection.weight is gpt_model.decoder.embed_tokens.weight"}});
    report.kosmosg_tensors = kosmosg_weights.size();
    write_json(staging / "kosmosg" / "config.json", config);
    for (const char* file : {"sentencepiece.bpe.model", "dict.txt"})
      fs::copy_file(tokenizer_dir / file, staging / "kosmosg" / file);

    if (options.sd15_dir) {
      for (const char* part : {"unet", "vae", "scheduler"}) reuse_component(*options.sd15_dir, part, staging);
    } else {
      const auto unet_weights = with_prefix_stripped(state, "diffusion_unet.unet.");
      const auto vae_weights = with_prefix_stripped(state, "vae.vae.");
      write_component<models::UNet2DConditionModel, models::UNet2DConditionConfig>(
          staging / "unet", merged(io::builtin_config("sd15/unet.json"), sizes.value("unet", io::Json::object())),
          unet_weights, options.checkpoint + " (diffusion_unet.unet.*)", options.float32);
      write_component<models::AutoencoderKL, models::AutoencoderKLConfig>(
          staging / "vae", merged(io::builtin_config("sd15/vae.json"), sizes.value("vae", io::Json::object())),
          vae_weights, options.checkpoint + " (vae.vae.*)", options.float32);
      report.unet_tensors = unet_weights.size();
      report.vae_tensors = vae_weights.size();
      fs::create_directories(staging / "scheduler");
      write_json(staging / "scheduler" / "scheduler_config.json",
                 merged(io::builtin_config("sd15/scheduler.json"), sizes.value("scheduler", io::Json::object())));
    }
    write_json(staging / "model_index.json",
               {{"_class_name", "KosmosGPipeline"},
                {"_kosmosg_stage", report.stage},
                {"kosmosg", {"kosmosg", "KosmosGModel"}},
                {"scheduler", {"diffusers", "PNDMScheduler"}},
                {"unet", {"diffusers", "UNet2DConditionModel"}},
                {"vae", {"diffusers", "AutoencoderKL"}}});
  });
  return report;
}

ExportReport export_model(const std::string& model_dir, const std::string& out_dir, c10::ScalarType dtype) {
  constexpr const char* op = "export";
  const fs::path model(model_dir), out(out_dir);
  if (!fs::is_directory(model)) fail(op, model_dir + " is not a folder");
  if (!fs::exists(model / "model_index.json") && !fs::exists(model / "kosmosg" / "config.json"))
    fail(op, model_dir + " is not a model folder (expected model_index.json or kosmosg/config.json)");
  check_output_folder(out, op);
  if (!c10::isFloatingType(dtype)) fail(op, std::string("cannot store weights as ") + c10::toString(dtype));
  // Training state stays behind; the model is the rest.
  auto is_training_state = [](const std::string& name) {
    return name == "checkpoints" || name == "samples" || name == "metrics.jsonl";
  };
  ExportReport report;
  write_staged(out, [&](const fs::path& staging) {
    auto copy_file = [&](const fs::path& from, const fs::path& to) {
      ++report.files;
      if (from.extension() != ".safetensors") {
        fs::copy_file(from, to);
        return;
      }
      const auto file = io::SafeTensors::open(from.string());
      io::TensorMap cast;
      for (const auto& [name, t] : file.tensors()) cast.emplace(name, t.is_floating_point() ? t.to(dtype) : t);
      report.tensors += cast.size();
      io::save_safetensors(to.string(), cast, file.metadata());
      report.weight_bytes += fs::file_size(to);
    };
    for (const auto& entry : fs::directory_iterator(model)) {
      const std::string name = entry.path().filename().string();
      if (is_training_state(name)) continue;
      if (entry.is_directory()) {
        fs::create_directories(staging / name);
        for (const auto& f : fs::directory_iterator(entry.path()))
          if (f.is_regular_file()) copy_file(f.path(), staging / name / f.path().filename());
      } else if (entry.is_regular_file()) {
        copy_file(entry.path(), staging / name);
      }
    }
  });
  return report;
}

}  // namespace kosmosg::pipeline
