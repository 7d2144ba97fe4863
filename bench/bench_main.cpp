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

#include "kosmosg/io/config.h"
#include "kosmosg/models/clip.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/models/vae.h"
#include "kosmosg/runtime.h"

namespace {

using namespace kosmosg;

void report(const std::string& name, int runs, int threads, const std::function<void()>& body) {
  body();  // warm-up: first-touch allocations and one-time kernel selection
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
  app.add_option("--only", only, "Run only these figures: unet_b1, unet_b2, vae_decode, text_encoder");
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
    struct rusage usage {};
    getrusage(RUSAGE_SELF, &usage);
    std::printf("peak_rss: %ld MiB\n", usage.ru_maxrss / 1024);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kosmosg_bench: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
