#include "harness.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/nn/autocast.h"
#include "kosmosg/train/diffusion_loss.h"

namespace kosmosg::golden {
namespace {

void run_diffusion_loss(const Case& c, Report& report) {
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(c.config.at("unet")));
  io::load_weights(*unet, c.params("unet."));
  // The instruct stage's loss: the frozen UNet stays float32 and computes under autocast in the
  // test dtype, as the trainer's precision policy runs it.
  unet->to(placement().device);
  unet->eval();
  train::DiffusionLoss loss(unet, diffusion::DDPMTraining(c.config.at("noise_scheduler")));
  train::DiffusionLossDraws draws{c.training_input("noise"), c.training_input("timesteps"),
                                  c.training_input("random_p")};
  torch::NoGradGuard no_grad;
  nn::AutocastGuard autocast(placement().device.type(), placement().dtype);
  auto out = loss.forward(c.training_input("latents"), c.training_input("condition"), c.training_input("null_token"),
                          draws);
  report.check(c, "noisy_latents", out.noisy_latents);
  report.check(c, "unet_condition", out.unet_condition);
  report.check(c, "model_pred", out.model_pred);
  report.check(c, "diff_loss", out.loss.reshape({1}));
}

KOSMOSG_GOLDEN_MODULE("Diffusionmodel", run_diffusion_loss);

}  // namespace
}  // namespace kosmosg::golden
