// The Scheduler base class and the factory.
#include "kosmosg/diffusion/scheduler.h"

#include <torch/torch.h>

#include "diffusion/internal.h"
#include "kosmosg/error.h"

namespace kosmosg::diffusion {

Scheduler::Scheduler(std::string name, std::string class_name, io::Json config)
    : name_(std::move(name)), class_name_(std::move(class_name)), config_(std::move(config)) {}

at::Tensor Scheduler::scale_model_input(const at::Tensor& sample, size_t step_index) const {
  timestep_at(step_index, "scale_model_input");
  return sample;
}

at::Tensor Scheduler::add_noise(const at::Tensor& original, const at::Tensor& noise, size_t step_index) const {
  const auto t = static_cast<int64_t>(timestep_at(step_index, "add_noise"));
  return detail::add_noise(schedule_, original, noise, at::full({1}, t, at::kLong), "add_noise");
}

at::Tensor Scheduler::step_noise(const at::Tensor& noise, const at::Tensor& like) const {
  // randn of the shape, not randn_like: a non-contiguous sample must get its values in the same
  // logical order as diffusers' randn_tensor(shape), or one seed gives two images.
  if (!noise.defined()) return at::randn(like.sizes(), like.options());
  if (noise.sizes() != like.sizes())
    fail_here("the step noise has shape " + c10::str(noise.sizes()) + " but the sample has " +
              c10::str(like.sizes()));
  return noise;
}

double Scheduler::timestep_at(size_t step_index, const char* op) const {
  if (num_inference_steps_ == 0) fail_here(std::string(op) + " was called before set_timesteps");
  if (step_index >= timesteps_.size())
    fail_here(std::string(op) + ": step index " + std::to_string(step_index) + " is out of range (" +
              std::to_string(timesteps_.size()) + " timesteps)");
  return timesteps_[step_index];
}

void Scheduler::check_steps(int64_t steps) const {
  const int64_t n = schedule_.num_train_timesteps;
  if (steps < 1 || steps > n)
    fail_setting("scheduler", "steps",
                 "{} " + std::to_string(steps) + " must lie in [1, " + std::to_string(n) +
                     "] (the num_train_timesteps of " + name_ + ", " + class_name_ + ")");
}

void Scheduler::check_timestep_range(const std::vector<double>& timesteps, int64_t steps,
                                     const std::string& spacing, int64_t steps_offset) const {
  const int64_t n = schedule_.num_train_timesteps;
  for (double t : timesteps)
    if (t < 0 || t >= static_cast<double>(n))
      fail_here("timestep " + std::to_string(static_cast<int64_t>(t)) + " (spacing " + spacing + ", steps_offset " +
                std::to_string(steps_offset) + ", " + std::to_string(steps) + " steps) is outside [0, " +
                std::to_string(n - 1) + "]");
}

void Scheduler::fail_here(const std::string& what) const {
  fail("scheduler", name_ + " (" + class_name_ + "): " + what);
}

std::vector<std::string> scheduler_kinds() {
  return {"ddim", "dpmpp-2m", "dpmpp-2m-karras", "dpmpp-2m-sde", "dpmpp-2m-sde-karras", "euler", "euler-a", "pndm"};
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& kind, const io::Json& scheduler_config) {
  if (kind == "ddim") return detail::make_ddim(kind, scheduler_config);
  if (kind == "dpmpp-2m") return detail::make_dpm_solver(kind, scheduler_config, io::Json::object());
  if (kind == "dpmpp-2m-karras")
    return detail::make_dpm_solver(kind, scheduler_config, {{"use_karras_sigmas", true}});
  if (kind == "dpmpp-2m-sde")
    return detail::make_dpm_solver(kind, scheduler_config, {{"algorithm_type", "sde-dpmsolver++"}});
  if (kind == "dpmpp-2m-sde-karras")
    return detail::make_dpm_solver(kind, scheduler_config,
                                   {{"algorithm_type", "sde-dpmsolver++"}, {"use_karras_sigmas", true}});
  if (kind == "euler") return detail::make_euler(kind, scheduler_config, false);
  if (kind == "euler-a") return detail::make_euler(kind, scheduler_config, true);
  if (kind == "pndm") return detail::make_pndm(kind, scheduler_config);
  std::string valid;
  for (const auto& k : scheduler_kinds()) valid += (valid.empty() ? "" : ", ") + k;
  fail_setting("scheduler", "sampler", "unknown {} '" + kind + "' (valid: " + valid + ")");
}

std::string scheduler_kind_for_class(const std::string& class_name) {
  if (class_name == "DDIMScheduler") return "ddim";
  if (class_name == "DPMSolverMultistepScheduler") return "dpmpp-2m";
  if (class_name == "EulerDiscreteScheduler") return "euler";
  if (class_name == "EulerAncestralDiscreteScheduler") return "euler-a";
  if (class_name == "PNDMScheduler") return "pndm";
  return "";
}

}  // namespace kosmosg::diffusion
