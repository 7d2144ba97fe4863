#include "harness.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/pipeline/diffusion.h"

namespace kosmosg::golden {
namespace {

void run_sample_pipeline(const Case& c, Report& report) {
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(c.config.at("unet")));
  models::AutoencoderKL vae(models::AutoencoderKLConfig::from_json(c.config.at("vae")));
  io::load_weights(*unet, c.params("unet."));
  io::load_weights(*vae, c.params("vae."));
  place(*unet);
  place(*vae);
  pipeline::DiffusionDecoder decoder(unet, vae, c.config.at("scheduler"));

  pipeline::SamplingOptions options;
  options.sampler = "dpmpp-2m";
  options.steps = c.config.at("num_inference_steps").get<int64_t>();
  options.guidance = c.config.at("text_guidance_scale").get<double>();
  std::vector<int64_t> timesteps;
  auto on_step = [&](const pipeline::StepInfo& s) {
    const std::string i = std::to_string(s.index);
    timesteps.push_back(static_cast<int64_t>(s.timestep));
    report.check(c, "latent_model_input." + i, s.model_input);
    report.check(c, "noise_pred." + i, s.noise_pred);
    report.check(c, "latents." + i, s.latents);
  };
  auto generator = at::make_generator<at::CPUGeneratorImpl>(0);
  at::Tensor latents = decoder.sample(c.input("condition"), c.input("latents"), options, generator, on_step);
  report.check(c, "timesteps", at::tensor(timesteps));
  report.check(c, "final_latents", latents);
  at::Tensor image = decoder.decode(latents);
  report.check(c, "image", image);
  report.check(c, "image_01", (image / 2 + 0.5).clamp(0, 1));
}

KOSMOSG_GOLDEN_MODULE("KosmosG.sample_pipeline", run_sample_pipeline);

}  // namespace
}  // namespace kosmosg::golden
