// Speed and memory figures of the full-size SD1.5 parts with random weights (no download).
// One line per figure, `NAME: MEDIAN s (min MIN, max MAX, RUNS runs, THREADS threads)`, then
// `peak_rss: N MiB`, so scripts can read it.
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
#include "kosmosg/pipeline/diffusion.h"
#include "kosmosg/runtime.h"

namespace {

using namespace kosmosg;

void report(const std::string& name, int runs, int threads, const std::function<void()>& body,
            bool warm_up = true) {
  if (warm_up) body();  // first-touch allocations and one-time kernel selection
  std::vector<double> times;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  std::printf("%s: %.3f s (min %.3f, max %.3f, %d runs, %d threads)\n", name.c_str(), times[times.size() / 2],
              times.front(), times.back(), runs, threads);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  kosmosg::ensure_passive_omp_wait(argv);
  CLI::App app{"kosmosg benchmarks: full-size SD1.5 UNet, VAE and text encoder with random weights"};
  std::string configs = "configs/sd15";
  std::vector<std::string> only;
  int runs = 3, threads = 0;
  app.add_option("--configs", configs, "Folder with unet.json, vae.json, text_encoder.json")->capture_default_str();
  app.add_option("--only", only, "Run only these figures: unet_b1, unet_b2, unet_b2_lora, unet_b2_lora_merged, controlnet_b2, vae_decode, text_encoder, encode_condition, generate_512");
  app.add_option("--runs", runs, "Timed runs per figure (after one warm-up)")->capture_default_str();
  app.add_option("--threads", threads, "Threads (0 = all cores)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    const int used = configure_threads(threads);
    std::printf("threads: %d (OMP_WAIT_POLICY=%s)\n", used, std::getenv("OMP_WAIT_POLICY"));
    const std::set<std::string> wanted(only.begin(), only.end());
    auto selected = [&](const std::string& n) { return wanted.empty() || wanted.count(n) > 0; };
    torch::NoGradGuard no_grad;
    torch::manual_seed(0);

    if (selected("unet_b1") || selected("unet_b2")) {
      models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::read_json(configs + "/unet.json")));
      unet->eval();
      for (int64_t batch : {1, 2}) {
        const std::string name = "unet_b" + std::to_string(batch);
        if (!selected(name)) continue;
        auto x = torch::randn({batch, 4, 64, 64});
        auto t = torch::full({1}, 500, torch::kLong);
        auto ctx = torch::randn({batch, 77, 768});
        report(name, runs, used, [&] { unet->forward(x, t, ctx); });
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
      if (selected("unet_b2_lora")) report("unet_b2_lora", runs, used, [&] { unet->forward(x, t, ctx); });
      models::merge_lora(*unet);
      if (selected("unet_b2_lora_merged")) report("unet_b2_lora_merged", runs, used, [&] { unet->forward(x, t, ctx); });
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
      report("controlnet_b2", runs, used, [&] {
        const auto residuals = controlnet->forward(x, t, ctx, cond);
        unet->forward(x, t, ctx, &residuals);
      });
    }
    if (selected("vae_decode")) {
      models::AutoencoderKL vae(models::AutoencoderKLConfig::from_json(io::read_json(configs + "/vae.json")));
      vae->eval();
      auto z = torch::randn({1, 4, 64, 64});
      report("vae_decode", runs, used, [&] { vae->decode(z); });
    }
    if (selected("text_encoder")) {
      models::CLIPTextModel te(models::CLIPTextConfig::from_json(io::read_json(configs + "/text_encoder.json")));
      te->eval();
      auto ids = torch::randint(0, 49407, {1, 77}, torch::kLong);
      report("text_encoder", runs, used, [&] { te->forward(ids); });
    }
    if (selected("encode_condition") || selected("generate_512")) {
      // Full-size Kosmos-G conditioning (MLLM 24×2048, ViT-L/14, XConnector, AlignerNet M) over a
      // prompt with two images: <s> <image>×65 </image> text <image>×65 </image> text.
      models::KosmosGModel kg(models::KosmosGConfig::from_json(io::builtin_config("kosmosg/full.json")));
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
      auto src = torch::tensor(tokens).unsqueeze(0);
      auto image_mask = torch::tensor(mask).unsqueeze(0).to(torch::kBool);
      auto pixels = torch::randn({2, 3, config.vision.image_size, config.vision.image_size});
      auto negative = torch::zeros({1, 1}, torch::kLong);
      if (selected("encode_condition")) {
        std::printf("encode_condition prompt: %zu tokens, 2 images\n", tokens.size());
        report("encode_condition", runs, used, [&] { kg->encode_condition(src, pixels, image_mask, negative, 1); });
      }
      if (selected("generate_512")) {
        models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(io::read_json(configs + "/unet.json")));
        models::AutoencoderKL vae(models::AutoencoderKLConfig::from_json(io::read_json(configs + "/vae.json")));
        pipeline::DiffusionDecoder decoder(unet, vae, io::read_json(configs + "/scheduler.json"));
        pipeline::GenerateOptions options;
        options.sampling.steps = 25;
        report("generate_512", runs, used, [&] {
          decoder.generate(kg->encode_condition(src, pixels, image_mask, negative, 1), options);
        }, /*warm_up=*/false);  // minutes per run; the first of 25 steps warms up
      }
    }
    struct rusage usage {};
    getrusage(RUSAGE_SELF, &usage);
    std::printf("peak_rss: %ld MiB\n", usage.ru_maxrss / 1024);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kosmosg_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
