// Speed and memory figures of the full-size SD1.5 and Kosmos-G parts with random weights (no
// download), on the CPU or a CUDA device. One line per figure,
// `NAME: MEDIAN s (min MIN, max MAX, RUNS runs, THREADS threads)`, then `peak_rss: N MiB` (and
// on CUDA `peak_gpu_memory: N MiB`), so scripts can read it; the UNet, VAE and training figures
// add `NAME: X GFLOP per ..., Y GFLOP/s` (TFLOP from a teraflop on), counted on one more run.
#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <set>

#include "kosmosg/io/builtin_configs.h"
#include "kosmosg/io/config.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/controlnet.h"
#include "kosmosg/models/lora.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/models/kosmosg.h"
#include "kosmosg/models/vae.h"
#include "kosmosg/nn/lora.h"
#include "kosmosg/pipeline/diffusion.h"
#include "kosmosg/runtime.h"
#include "kosmosg/train/stage.h"
#include "kosmosg/train/trainer.h"
#include "kosmosg/util/flop_counter.h"

namespace {

using namespace kosmosg;

// Where the figures compute: the device, the dtype of inference weights, and the training precision.
struct Placement {
  c10::Device device{c10::kCPU};
  c10::ScalarType dtype = c10::kFloat;
  std::string precision = "float32";
  // Storage of the UNet's and Kosmos-G's blocks for float32 compute (kFloat: as `dtype`).
  c10::ScalarType storage = c10::kFloat;
  double peak_tflops = 0;  // what MFU divides by; 0: the GPU's half-precision peak where known
  at::TensorOptions options() const { return at::TensorOptions().device(device).dtype(dtype); }
};

// The median time of `body` over `runs` runs; on CUDA each run waits for the device's queue.
double report(const std::string& name, int runs, int threads, const Placement& at, const std::function<void()>& body,
              bool warm_up = true) {
  auto timed = [&] {
    body();
    synchronize(at.device);
  };
  reset_peak_device_memory(at.device);
  if (warm_up) timed();  // first-touch allocations and one-time kernel selection
  std::vector<double> times;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    timed();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  std::printf("%s: %.3f s (min %.3f, max %.3f, %d runs, %d threads)\n", name.c_str(), times[times.size() / 2],
              times.front(), times.back(), runs, threads);
  if (at.device.is_cuda())
    std::printf("peak_gpu_memory after %s: %lld MiB\n", name.c_str(),
                static_cast<long long>(peak_device_memory(at.device) >> 20));
  std::fflush(stdout);
  return times[times.size() / 2];
}

void print_peak_rss(const std::string& after) {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("peak_rss after %s: %ld MiB\n", after.c_str(), usage.ru_maxrss / 1024);
  std::fflush(stdout);
}

// Dense half-precision tensor-core peaks from NVIDIA's datasheets, TFLOP/s, by device name
// (more specific names first); 0 where not known.
double half_precision_peak_tflops(const std::string& gpu) {
  static const std::pair<const char*, double> kPeaks[] = {
      {"H200 NVL", 835}, {"H200", 989}, {"H100 NVL", 835}, {"H100 PCIe", 756}, {"H100", 989}, {"A100", 312}};
  for (const auto& [name, peak] : kPeaks)
    if (gpu.find(name) != std::string::npos) return peak;
  return 0;
}

// The operations one run of `body` computes, by FlopCounter.
double counted_flops(const std::function<void()>& body, const Placement& at) {
  FlopCounter counter;
  body();
  synchronize(at.device);
  return counter.total();
}

// `NAME: X TFLOP per PER, Y TFLOP/s` (in GFLOP below a TFLOP), then the share of `peak` TFLOP/s
// where given: MFU, or HFU where recomputed forwards (gradient checkpointing) are counted too.
void print_flops(const std::string& name, const char* per, double flops, double seconds, double peak,
                 const std::string& peak_source = "", bool recomputes = false) {
  const bool tera = flops >= 1e12;
  const double unit = tera ? 1e12 : 1e9;
  const char* prefix = tera ? "T" : "G";
  std::printf("%s: %.3f %sFLOP per %s, %.3f %sFLOP/s", name.c_str(), flops / unit, prefix, per,
              flops / seconds / unit, prefix);
  if (peak > 0)
    std::printf(", %s %.1f %% of %.0f TFLOP/s (%s)", recomputes ? "HFU" : "MFU", 100 * flops / seconds / 1e12 / peak,
                peak, peak_source.c_str());
  std::printf("\n");
  std::fflush(stdout);
}

// A model folder's contents with random weights: the Kosmos-G config `kosmosg` (with its unet, vae
// and noise_scheduler sections for the instruct stage) at the sizes it names.
train::StageModels random_stage_models(const io::Json& kosmosg, data::StageKind stage) {
  train::StageModels m;
  m.kosmosg_config = kosmosg;
  models::KosmosGModel model(models::KosmosGConfig::from_json(kosmosg, "bench config"));
  m.kosmosg = io::state_dict(*model);
  if (stage != data::StageKind::Instruct) return m;
  m.unet_config = kosmosg.at("unet");
  m.vae_config = kosmosg.at("vae");
  m.scheduler_config = kosmosg.at("noise_scheduler");
  m.unet = io::state_dict(*models::UNet2DConditionModel(models::UNet2DConditionConfig::from_json(m.unet_config)));
  m.vae = io::state_dict(*models::AutoencoderKL(models::AutoencoderKLConfig::from_json(m.vae_config)));
  return m;
}

// `batch` samples of <s> text <image>×(Q+1) </image> text </s> (one image each), with targets of
// `target_size`; text-only 24-token captions for the align stage.
data::Batch synthetic_batch(const models::KosmosGConfig& c, data::StageKind stage, int64_t batch, int64_t target_size) {
  std::vector<int64_t> doc{0}, input{0}, loss{1};
  const int64_t boi = c.mllm.vocab_size - 4, eoi = c.mllm.vocab_size - 3;
  auto text = [&](int64_t n) {
    for (int64_t i = 0; i < n; ++i) doc.push_back(10 + i), input.push_back(0), loss.push_back(1);
  };
  if (stage == data::StageKind::Align) {
    text(24);
  } else {
    text(5);
    doc.push_back(boi), input.push_back(0), loss.push_back(0);
    for (int64_t i = 0; i < c.connector.latent_query_num; ++i) doc.push_back(boi), input.push_back(1), loss.push_back(0);
    doc.push_back(eoi), input.push_back(0), loss.push_back(1);
    text(5);
  }
  doc.push_back(2), input.push_back(0), loss.push_back(1);
  const auto row = [&](const std::vector<int64_t>& v, size_t from, size_t to) {
    return torch::tensor(std::vector<int64_t>(v.begin() + static_cast<long>(from), v.begin() + static_cast<long>(to)));
  };
  data::Batch b;
  const size_t n = doc.size();
  b.src_tokens = row(doc, 0, n - 1).unsqueeze(0).repeat({batch, 1});
  b.target = row(doc, 1, n).unsqueeze(0).repeat({batch, 1});
  b.img_gpt_input_mask = row(input, 0, n - 1).to(torch::kByte).unsqueeze(0).repeat({batch, 1});
  b.gpt_loss_mask = row(loss, 0, n - 1).to(torch::kByte).unsqueeze(0).repeat({batch, 1});
  if (stage != data::StageKind::Align) b.images = torch::randn({batch, 3, c.vision.image_size, c.vision.image_size});
  if (stage == data::StageKind::Instruct) b.target_images = torch::rand({batch, 3, target_size, target_size}) * 2 - 1;
  b.captions.assign(static_cast<size_t>(batch), "a photo");
  b.nsentences = batch;
  b.ntokens = batch * static_cast<int64_t>(n);
  return b;
}

// One update (forward, backward, clipping, Adam) of each stage; the align stage's frozen CLIP
// teacher runs as part of the step.
void bench_training(const std::string& size, const io::Json& kosmosg, int64_t batch, int64_t target_size,
                    const io::Json& text_encoder, const std::function<bool(const std::string&)>& selected, int runs,
                    int threads, const Placement& at) {
  torch::AutoGradMode grad(true);
  for (const auto stage_kind : {data::StageKind::LM, data::StageKind::Align, data::StageKind::Instruct}) {
    const std::string base = std::string("train_") + data::stage_name(stage_kind) + "_" + size;
    if (!selected(base) && !selected(base + "_ckpt")) continue;
    // Built per stage so that the peak RSS of a stage run alone (--only) is its own.
    const auto models = random_stage_models(kosmosg, stage_kind);
    const auto config = models::KosmosGConfig::from_json(models.kosmosg_config);
    for (const bool checkpointing : {false, true}) {
      const std::string name = base + (checkpointing ? "_ckpt" : "");
      if (!selected(name)) continue;
      train::OptimizationOptions o;
      o.schedule.warmup_updates = 1;
      o.precision = train::PrecisionPolicy::parse(at.precision, at.device.type());
      o.loss_scaling = o.precision.compute == at::kHalf;
      train::StageOptions options;
      options.gradient_checkpointing = checkpointing;
      options.frozen_dtype = o.precision.compute;
      auto stage = train::make_stage(stage_kind, models, options);
      stage->model().to(at.device);
      o.precision.store(*stage);
      train::Trainer trainer(*stage, o);
      const auto b = synthetic_batch(config, stage_kind, batch, target_size);
      models::CLIPTextModel teacher(models::CLIPTextConfig::from_json(text_encoder));
      teacher->to(at.device);
      teacher->eval();
      at::Generator generator = at::detail::createCPUGenerator(0);
      const auto update = [&] {
        trainer.update({[&] {
          if (stage_kind != data::StageKind::Align) return stage->forward(b, generator);
          at::Tensor clip;
          {
            torch::NoGradGuard no_grad;
            const int64_t length = config.aligner.num_queries;
            clip = teacher
                       ->forward(torch::randint(0, teacher->config().vocab_size, {batch, length},
                                                at::TensorOptions().dtype(torch::kLong).device(at.device)))
                       .last_hidden_state;
          }
          return train::align_forward_with_teacher(*stage, b, clip);
        }});
      };
      const double seconds = report(name, runs, threads, at, update);
      std::printf("%s: batch %lld, %zu trainable tensors, %.2f samples/s (%s)\n", name.c_str(),
                  static_cast<long long>(batch), stage->trainable().size(), batch / seconds, at.precision.c_str());
      // MFU against --peak-tflops, or on CUDA in half precision against the GPU's datasheet peak.
      const bool half = o.precision.compute == at::kHalf || o.precision.compute == at::kBFloat16;
      const std::string device = device_name(at.device);
      const double peak = at.peak_tflops > 0                ? at.peak_tflops
                          : at.device.is_cuda() && half ? half_precision_peak_tflops(device)
                                                        : 0;
      print_flops(name, "update", counted_flops(update, at), seconds, peak,
                  at.peak_tflops > 0 ? "--peak-tflops" : device, checkpointing);
      print_peak_rss(name);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  kosmosg::ensure_passive_omp_wait(argv);
  CLI::App app{"kosmosg benchmarks: full-size SD1.5 UNet, VAE and text encoder with random weights"};
  std::string configs = "configs/sd15";
  std::vector<std::string> only;
  int runs = 3, threads = 0;
  std::string device_name = "cpu", dtype_name = "auto", storage_name = "float32";
  int64_t full_batch = 4;
  Placement at;
  app.add_option("--configs", configs, "Folder with unet.json, vae.json, text_encoder.json")->capture_default_str();
  app.add_option("--only", only, "Run only these figures: unet_b1, unet_b2, unet_b2_lora, unet_b2_lora_merged, controlnet_b2, vae_decode, text_encoder, encode_condition, sample_512, generate_512, train_{lm,align,instruct}_{tiny,mid,full}[_ckpt]");
  app.add_option("--runs", runs, "Timed runs per figure (after one warm-up)")->capture_default_str();
  app.add_option("--threads", threads, "Threads (0 = all cores)")->capture_default_str();
  app.add_option("--device", device_name, "cpu, cuda or cuda:N")->capture_default_str();
  app.add_option("--dtype", dtype_name, "Inference weights: auto (float16 on CUDA), float32, float16 or bfloat16")
      ->capture_default_str();
  app.add_option("--storage-dtype", storage_name,
                 "unet_*, encode_condition, generate_512: store the blocks in bfloat16 or float16, compute in float32")
      ->capture_default_str();
  bool cuda_graph = true;
  app.add_flag("!--no-cuda-graph", cuda_graph, "sample_512, generate_512: launch the UNet step by step, not as a captured CUDA graph");
  app.add_option("--peak-tflops", at.peak_tflops,
                 "train_*: the device's peak TFLOP/s for MFU (default on CUDA in half precision: the datasheet's, for H100/H200/A100)");
  app.add_option("--full-batch", full_batch, "Batch of the train_*_full figures")->capture_default_str();
  app.add_option("--precision", at.precision, "Training figures: float32, bfloat16, float16 (CUDA, loss scaling), memory-efficient-bf16 or memory-efficient-fp16 (CUDA)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const int used = configure_threads(threads);
    at.device = parse_device(device_name);
    at.dtype = parse_dtype(dtype_name, at.device);
    at.storage = parse_storage_dtype(storage_name, at.device, at.dtype);
    std::printf("threads: %d (OMP_WAIT_POLICY=%s), device %s, dtype %s, block storage %s, training precision %s, CUDA graph %s\n",
                used, std::getenv("OMP_WAIT_POLICY"), at.device.str().c_str(), c10::toString(at.dtype),
                c10::toString(at.storage), at.precision.c_str(), cuda_graph ? "on" : "off");
    const std::set<std::string> wanted(only.begin(), only.end());
    auto selected = [&](const std::string& n) { return wanted.empty() || wanted.count(n) > 0; };
    torch::NoGradGuard no_grad;
    torch::manual_seed(0);

    if (selected("unet_b1") || selected("unet_b2")) {
      models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::read_json(configs + "/unet.json")));
      unet->to(at.device, at.dtype);
      if (at.storage != c10::kFloat) unet->store_block_weights(at.storage);
      else nn::set_weight_packing(*unet, true);  // as the diffusion pipelines sample
      unet->eval();
      for (int64_t batch : {1, 2}) {
        const std::string name = "unet_b" + std::to_string(batch);
        if (!selected(name)) continue;
        auto x = torch::randn({batch, 4, 64, 64}, at.options());
        auto t = torch::full({1}, 500, at::TensorOptions().dtype(torch::kLong).device(at.device));
        auto ctx = torch::randn({batch, 77, 768}, at.options());
        const auto forward = [&] { unet->forward(x, t, ctx); };
        const double seconds = report(name, runs, used, at, forward);
        print_flops(name, "forward", counted_flops(forward, at), seconds, 0);
      }
    }
    if (selected("unet_b2_lora") || selected("unet_b2_lora_merged")) {
      // A typical style LoRA: rank 64 on every linear and 1×1 layer of the transformers (what
      // Kohya's default network adapts), applied beside the weights, then merged into them.
      models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::read_json(configs + "/unet.json")));
      unet->eval();
      models::LoraWeights lora;
      lora.source = "random rank-64 LoRA";
      for (const auto& item : unet->named_modules()) {
        if (item.key().find("attentions") == std::string::npos || !dynamic_cast<nn::LoraLayer*>(item.value().get())) continue;
        const auto params = item.value()->named_parameters(false);
        const auto& w = params["weight"];
        if (w.dim() == 4 && w.size(2) != 1) continue;
        nn::LoraUpdate u;
        u.down = torch::randn(w.dim() == 4 ? std::vector<int64_t>{64, w.size(1), 1, 1} : std::vector<int64_t>{64, w.size(1)}) * 0.01;
        u.up = torch::randn(w.dim() == 4 ? std::vector<int64_t>{w.size(0), 64, 1, 1} : std::vector<int64_t>{w.size(0), 64}) * 0.01;
        u.alpha = 32;
        lora.unet.emplace(item.key(), u);
      }
      std::printf("unet_b2_lora: %zu adapted layers\n", lora.unet.size());
      models::attach_lora(lora, *unet, nullptr, 0.8);
      auto x = torch::randn({2, 4, 64, 64});
      auto t = torch::full({1}, 500, torch::kLong);
      auto ctx = torch::randn({2, 77, 768});
      if (selected("unet_b2_lora")) report("unet_b2_lora", runs, used, at, [&] { unet->forward(x, t, ctx); });
      models::merge_lora(*unet);
      if (selected("unet_b2_lora_merged"))
        report("unet_b2_lora_merged", runs, used, at, [&] { unet->forward(x, t, ctx); });
    }
    if (selected("controlnet_b2")) {
      // One guided step with a ControlNet: its encoder copy, then the UNet with the residuals.
      const auto json = io::read_json(configs + "/unet.json");
      models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(json));
      models::ControlNetModel controlnet(models::ControlNetConfig::from_json(json));
      unet->eval();
      controlnet->eval();
      auto x = torch::randn({2, 4, 64, 64});
      auto t = torch::full({1}, 500, torch::kLong);
      auto ctx = torch::randn({2, 77, 768});
      auto cond = torch::rand({2, 3, 512, 512});
      report("controlnet_b2", runs, used, at, [&] {
        const auto residuals = controlnet->forward(x, t, ctx, cond);
        unet->forward(x, t, ctx, &residuals);
      });
    }
    if (selected("vae_decode")) {
      models::AutoencoderKL vae(models::AutoencoderKLConfig::from_json(io::read_json(configs + "/vae.json")));
      vae->to(at.device, at.dtype);
      vae->eval();
      auto z = torch::randn({1, 4, 64, 64}, at.options());
      const auto decode = [&] { vae->decode(z); };
      const double seconds = report("vae_decode", runs, used, at, decode);
      print_flops("vae_decode", "decode", counted_flops(decode, at), seconds, 0);
    }
    if (selected("sample_512")) {
      // What diffusers' progress bar counts: SD1.5 sampler steps at 512x512, batch 1, with
      // classifier-free guidance (the UNet at batch 2), the scheduler's arithmetic included.
      const int64_t steps = 50;
      models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::read_json(configs + "/unet.json")));
      models::AutoencoderKL vae(models::AutoencoderKLConfig::from_json(io::read_json(configs + "/vae.json")));
      pipeline::DiffusionDecoder decoder(unet, vae, io::read_json(configs + "/scheduler.json"));
      decoder.to(at.device, at.dtype);
      unet->eval();
      vae->eval();
      pipeline::SamplingOptions sampling;
      sampling.sampler = "pndm";
      sampling.steps = steps;
      sampling.cuda_graph = cuda_graph;
      const auto condition = torch::randn({2, 77, 768}, at.options());
      const auto latents = torch::randn({1, 4, 64, 64});
      const double seconds = report("sample_512", runs, used, at, [&] {
        decoder.sample(condition, latents, sampling, at::detail::createCPUGenerator(0));
      });
      std::printf("sample_512: %.2f it/s (%lld steps, guidance 7.5)\n", steps / seconds, static_cast<long long>(steps));
    }
    if (selected("text_encoder")) {
      models::CLIPTextModel te(models::CLIPTextConfig::from_json(io::read_json(configs + "/text_encoder.json")));
      te->to(at.device, at.dtype);
      te->eval();
      auto ids = torch::randint(0, 49407, {1, 77}, at::TensorOptions().dtype(torch::kLong).device(at.device));
      report("text_encoder", runs, used, at, [&] { te->forward(ids); });
    }
    if (selected("encode_condition") || selected("generate_512")) {
      // Full-size Kosmos-G conditioning (MLLM 24×2048, ViT-L/14, XConnector, AlignerNet M) over a
      // prompt with two images: <s> <image>×65 </image> text <image>×65 </image> text.
      models::KosmosGModel kg(models::KosmosGConfig::from_json(io::builtin_config("kosmosg/full.json")));
      kg->to(at.device, at.dtype);
      if (at.storage != c10::kFloat) kg->store_block_weights(at.storage);
      kg->eval();
      const auto& config = kg->config();
      const int64_t slots = config.connector.latent_query_num;
      std::vector<int64_t> tokens{0}, mask{0};
      for (int image = 0; image < 2; ++image) {
        tokens.push_back(64003);
        mask.push_back(0);
        for (int64_t i = 0; i < slots; ++i) tokens.push_back(64003), mask.push_back(1);
        tokens.push_back(64004);
        mask.push_back(0);
        for (int64_t word : {20, 5, 2711, 1679}) tokens.push_back(word), mask.push_back(0);
      }
      auto src = torch::tensor(tokens).unsqueeze(0).to(at.device);
      auto image_mask = torch::tensor(mask).unsqueeze(0).to(at.device, torch::kBool);
      auto pixels = torch::randn({2, 3, config.vision.image_size, config.vision.image_size}, at.options());
      auto negative = torch::zeros({1, 1}, at::TensorOptions().dtype(torch::kLong).device(at.device));
      if (selected("encode_condition")) {
        std::printf("encode_condition prompt: %zu tokens, 2 images\n", tokens.size());
        report("encode_condition", runs, used, at, [&] { kg->encode_condition(src, pixels, image_mask, negative, 1); });
      }
      if (selected("generate_512")) {
        models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::read_json(configs + "/unet.json")));
        models::AutoencoderKL vae(models::AutoencoderKLConfig::from_json(io::read_json(configs + "/vae.json")));
        pipeline::DiffusionDecoder decoder(unet, vae, io::read_json(configs + "/scheduler.json"));
        decoder.to(at.device, at.dtype);
        if (at.storage != c10::kFloat) decoder.store_block_weights(at.storage);
        pipeline::GenerateOptions options;
        options.sampling.steps = 25;
        options.sampling.cuda_graph = cuda_graph;
        report("generate_512", runs, used, at, [&] {
          decoder.generate(kg->encode_condition(src, pixels, image_mask, negative, 1), options);
        }, /*warm_up=*/at.device.is_cuda());  // minutes per run on the CPU, where the first of 25 steps warms up
      }
    }
    // Training updates: the tiny config, and a mid size (MLLM 12x768, ViT-B/16, full aligner and
    // SD1.5 UNet/VAE at 64x64 latents, batch 1).
    {
      const auto tiny = io::builtin_config("kosmosg/tiny.json");
      bench_training("tiny", tiny, 4, 16, tiny.at("clip_text"), selected, runs, used, at);
    }
    {
      auto mid = io::builtin_config("kosmosg/full.json");
      mid["mllm"].update({{"decoder_embed_dim", 768}, {"decoder_layers", 12}, {"decoder_attention_heads", 12},
                          {"decoder_ffn_embed_dim", 3072}, {"embed_scale", nullptr}});
      mid["vision"].update({{"width", 768}, {"layers", 12}, {"patch_size", 16}, {"head_width", 64}, {"heads", 12}});
      mid["connector"].update({{"input_dim", 768}, {"output_dim", 768}, {"decoder_attention_heads", 12}});
      mid["aligner"]["input_dim"] = 768;
      mid["unet"] = io::read_json(configs + "/unet.json");
      mid["vae"] = io::read_json(configs + "/vae.json");
      if (std::any_of(only.begin(), only.end(), [](const std::string& n) { return n.find("_mid") != std::string::npos; }))
        bench_training("mid", mid, 1, 512, io::read_json(configs + "/text_encoder.json"), selected, std::min(runs, 2), used,
                       at);
    }
    {
      // The official size (MLLM 24x2048, ViT-L/14, SD1.5 UNet and VAE at 512x512): a GPU's figure.
      const auto full = io::builtin_config("kosmosg/full.json");
      if (std::any_of(only.begin(), only.end(), [](const std::string& n) { return n.find("_full") != std::string::npos; }))
        bench_training("full", full, full_batch, 512, io::read_json(configs + "/text_encoder.json"), selected,
                       std::min(runs, 3), used, at);
    }
    print_peak_rss("all");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kosmosg_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
