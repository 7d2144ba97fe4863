// Golden runners for the diffusers schedulers: "<Class>.sample_loop" (a full sampling loop with
// given model outputs) and "DDPMScheduler.training" (forward noising and training targets).
// Each scheduler is built from the case's `config` (the upstream class's complete config).
#include <torch/torch.h>

#include <regex>

#include "harness.h"
#include "kosmosg/diffusion/scheduler.h"
#include "kosmosg/error.h"

namespace kosmosg::golden {
namespace {

int64_t inference_steps(const Case& c) {
  const auto& meta = c.file.metadata();
  auto it = meta.find("num_inference_steps");
  if (it != meta.end()) return std::stoll(it->second);
  std::smatch m;
  static const std::regex re(R"(set_timesteps\((\d+)\))");
  if (std::regex_search(c.call, m, re)) return std::stoll(m[1].str());
  fail("golden", c.name + ": neither num_inference_steps nor set_timesteps(<n>) in the metadata");
}

void run_sample_loop(const Case& c, Report& report) {
  const std::string class_name = c.module.substr(0, c.module.find('.'));
  const std::string kind = diffusion::scheduler_kind_for_class(class_name);
  if (kind.empty()) fail("golden", c.name + ": no scheduler kind follows " + class_name);
  auto scheduler = diffusion::make_scheduler(kind, c.config);
  scheduler->set_timesteps(inference_steps(c));

  const auto& ts = scheduler->timesteps();
  report.check(c, "timesteps", at::tensor(ts, at::kDouble));
  const double sigma0 = scheduler->init_noise_sigma();
  report.check(c, "init_noise_sigma", at::full({1}, sigma0, at::kDouble));

  torch::NoGradGuard no_grad;
  at::Tensor x = c.input("initial_noise") * sigma0;
  report.check(c, "initial_sample", x);
  for (size_t i = 0; i < ts.size(); ++i) {
    const std::string idx = std::to_string(i);
    report.check(c, "scaled_input." + idx, scheduler->scale_model_input(x, i));
    at::Tensor noise;
    if (c.has("input.step_noise." + idx)) noise = c.input("step_noise." + idx);
    else if (scheduler->needs_noise()) fail("golden", c.name + ": the sampler needs input.step_noise." + idx);
    x = scheduler->step(c.input("model_output." + idx), i, x, noise);
    report.check(c, "prev_sample." + idx, x);
  }
}

void run_ddpm_training(const Case& c, Report& report) {
  diffusion::DDPMTraining ddpm(c.config);
  const at::Tensor x0 = c.input("original_samples");
  const at::Tensor noise = c.input("noise");
  const at::Tensor t = c.input("timesteps");
  report.check(c, "alphas_cumprod", ddpm.alphas_cumprod());
  report.check(c, "noisy_samples", ddpm.add_noise(x0, noise, t));
  report.check(c, "velocity", ddpm.velocity(x0, noise, t));
  report.check(c, "target", ddpm.target(x0, noise, t));
}

KOSMOSG_GOLDEN_MODULE("DDIMScheduler.sample_loop", run_sample_loop);
KOSMOSG_GOLDEN_MODULE("DPMSolverMultistepScheduler.sample_loop", run_sample_loop);
KOSMOSG_GOLDEN_MODULE("EulerDiscreteScheduler.sample_loop", run_sample_loop);
KOSMOSG_GOLDEN_MODULE("EulerAncestralDiscreteScheduler.sample_loop", run_sample_loop);
KOSMOSG_GOLDEN_MODULE("PNDMScheduler.sample_loop", run_sample_loop);
KOSMOSG_GOLDEN_MODULE("DDPMScheduler.training", run_ddpm_training);

}  // namespace
}  // namespace kosmosg::golden
