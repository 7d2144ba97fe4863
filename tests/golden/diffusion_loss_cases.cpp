#include "harness.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/train/diffusion_loss.h"

namespace kosmosg::golden {
namespace {

void run_diffusion_loss(const Case& c, Report& report) {
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(c.config.at("unet")));
  io::load_weights(*unet, c.params("unet."));
  unet->eval();
  train::DiffusionLoss loss(unet, diffusion::DDPMTraining(c.config.at("noise_scheduler")));
  train::DiffusionLossDraws draws{c.input("noise"), c.input("timesteps"), c.input("random_p")};
  torch::NoGradGuard no_grad;
  auto out = loss.forward(c.input("latents"), c.input("condition"), c.input("null_token"), draws);
  report.check(c, "noisy_latents", out.noisy_latents);
  report.check(c, "unet_condition", out.unet_condition);
  report.check(c, "model_pred", out.model_pred);
  report.check(c, "diff_loss", out.loss.reshape({1}));
}

KOSMOSG_GOLDEN_MODULE("Diffusionmodel", run_diffusion_loss);

}  // namespace
}  // namespace kosmosg::golden
