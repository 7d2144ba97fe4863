// Golden runner for LoRA files applied to diffusers' UNet2DConditionModel (Kohya and diffusers
// formats): the output without LoRA, with it attached unmerged, and with it merged.
#include "harness.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/models/lora.h"
#include "kosmosg/models/unet.h"

namespace kosmosg::golden {
namespace {

void run_unet_lora(const Case& c, Report& report) {
  models::UNet2DConditionModel unet(models::UNet2DConditionConfig::from_json(c.config));
  io::LoadOptions options;
  options.source_name = c.name + " param.*";
  io::load_weights(*unet, c.params(), options);
  place(*unet);
  torch::NoGradGuard no_grad;
  auto run = [&] {
    return unet->forward(c.input("sample"), c.input("timestep"), c.input("encoder_hidden_states"));
  };
  report.check(c, "sample_without_lora", run());

  const auto lora = models::parse_lora(c.file.tensors("lora."), c.name + " lora.*");
  const double scale = c.input("lora_scale").item<double>();
  auto strength = models::attach_lora(lora, *unet, nullptr, scale);
  report.check(c, "sample", run());
  *strength = 0;
  report.check(c, "sample_without_lora", run());
  *strength = scale;
  models::merge_lora(*unet);
  report.check(c, "sample", run());
}

}  // namespace

KOSMOSG_GOLDEN_MODULE("UNet2DConditionModel+LoRA", run_unet_lora);

}  // namespace kosmosg::golden
