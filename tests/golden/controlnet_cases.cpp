// Golden runner for diffusers' ControlNetModel feeding UNet2DConditionModel.
#include "harness.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/controlnet.h"
#include "kosmosg/models/unet.h"

namespace kosmosg::golden {
namespace {

void run_controlnet(const Case& c, Report& report) {
  models::ControlNetModel controlnet(models::ControlNetConfig::from_json(c.config.at("controlnet")));
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(c.config.at("unet")));
  io::LoadOptions options;
  options.source_name = c.name + " param.controlnet.*";
  io::load_weights(*controlnet, c.params("controlnet."), options);
  options.source_name = c.name + " param.unet.*";
  io::load_weights(*unet, c.params("unet."), options);
  place(*controlnet);
  place(*unet);
  models::check_controlnet_fits(controlnet->config(), unet->config(), c.name);

  torch::NoGradGuard no_grad;
  const auto residuals = controlnet->forward(c.input("sample"), c.input("timestep"),
                                             c.input("encoder_hidden_states"), c.input("controlnet_cond"),
                                             c.input("conditioning_scale").item<double>());
  for (size_t i = 0; i < residuals.down.size(); ++i)
    report.check(c, "down_block_res_samples." + std::to_string(i), residuals.down[i]);
  report.check(c, "mid_block_res_sample", residuals.mid);
  report.check(c, "sample", unet->forward(c.input("sample"), c.input("timestep"),
                                          c.input("encoder_hidden_states"), &residuals));
}

}  // namespace

KOSMOSG_GOLDEN_MODULE("ControlNetModel+UNet2DConditionModel", run_controlnet);

}  // namespace kosmosg::golden
