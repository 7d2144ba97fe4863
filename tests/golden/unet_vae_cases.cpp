// Golden runners for diffusers' UNet2DConditionModel and AutoencoderKL.
#include "harness.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/unet.h"
#include "kosmosg/models/vae.h"

namespace kosmosg::golden {
namespace {

void run_unet(const Case& c, Report& report) {
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(c.config));
  io::LoadOptions options;
  options.source_name = c.name + " param.*";
  io::load_weights(*unet, c.params(), options);
  place(*unet);
  torch::NoGradGuard no_grad;
  auto out =
      unet->forward(c.input("sample"), c.input("timestep"), c.input("encoder_hidden_states"));
  report.check(c, "sample", out);
}

void run_vae(const Case& c, Report& report) {
  models::AutoencoderKL vae(models::AutoencoderKLConfig::from_json(c.config));
  io::LoadOptions options;
  options.source_name = c.name + " param.*";
  io::load_weights(*vae, c.params(), options);
  place(*vae);
  torch::NoGradGuard no_grad;
  auto posterior = vae->encode(c.input("image"));
  report.check(c, "latent_mean", posterior.mean);
  report.check(c, "latent_logvar", posterior.logvar);
  report.check(c, "latent_sample", posterior.sample(c.input("sample_noise")));
  report.check(c, "decoded", vae->decode(c.input("z")));
}

}  // namespace

KOSMOSG_GOLDEN_MODULE("UNet2DConditionModel", run_unet);
KOSMOSG_GOLDEN_MODULE("AutoencoderKL", run_vae);

}  // namespace kosmosg::golden
