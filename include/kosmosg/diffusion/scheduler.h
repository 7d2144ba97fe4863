#pragma once
// Diffusion noise schedules and samplers with the semantics of diffusers v0.21.4: DDIM,
// DPM-Solver++ 2M and its SDE variant (each optionally with Karras sigmas), Euler,
// Euler-ancestral and PNDM for sampling, and DDPM's forward process for training.
//
// Every scheduler is built from a diffusers `scheduler_config.json` (any class's file: the SD1.5
// folders ship a PNDMScheduler file). Keys the file lacks take the defaults of the class the kind
// stands for, exactly as `<Class>.from_config(file)` does upstream; keys the class does not have
// are ignored. Coefficient tables (betas, alphas_cumprod, σ, λ) are float32 like upstream;
// scalars upstream keeps as Python floats are doubles here; tensor arithmetic runs in the
// sample's dtype on the sample's device.
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kosmosg/io/config.h"

namespace kosmosg::diffusion {

// β_t and ᾱ_t = ∏(1 − β) over the training timesteps, computed in float32 as upstream.
struct NoiseSchedule {
  int64_t num_train_timesteps = 0;
  at::Tensor betas;           // float32 [N], CPU
  at::Tensor alphas_cumprod;  // float32 [N], CPU
  std::vector<float> acp;     // alphas_cumprod on the host

  // beta_schedule: "linear" (linspace(b0, b1, N)), "scaled_linear" (linspace(√b0, √b1, N)²),
  // "squaredcos_cap_v2" (Glide cosine), "sigmoid" (DDPM only, allow_sigmoid); `trained_betas`
  // (non-empty) overrides them all. `rescale_zero_snr` applies DDIM's zero-terminal-SNR rescaling.
  static NoiseSchedule make(int64_t num_train_timesteps, double beta_start, double beta_end,
                            const std::string& beta_schedule,
                            const std::vector<double>& trained_betas = {},
                            bool rescale_zero_snr = false, bool allow_sigmoid = false,
                            const std::string& what = "scheduler");

  // ᾱ at an integer timestep (bounds-checked).
  float alpha_cumprod(int64_t t) const;
};

// A sampler. Use: set_timesteps(n); x = noise · init_noise_sigma(); for i in 0 … timesteps().size()−1:
// e = model(scale_model_input(x, i), timesteps()[i]); x = step(e, i, x[, noise]).
class Scheduler {
 public:
  virtual ~Scheduler() = default;
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // The kind it was made as ("ddim", "dpmpp-2m", ...).
  const std::string& name() const { return name_; }
  // The diffusers class whose semantics it follows ("DDIMScheduler", ...).
  const std::string& class_name() const { return class_name_; }
  // The effective config: the class's keys, each from the file or the class default.
  const io::Json& config() const { return config_; }
  const NoiseSchedule& schedule() const { return schedule_; }
  const std::string& prediction_type() const { return prediction_type_; }

  // Computes the timesteps for `steps` inference steps and resets any multistep history.
  // steps must lie in [1, num_train_timesteps].
  virtual void set_timesteps(int64_t steps) = 0;
  // The timesteps to visit, exactly as upstream (PNDM repeats its second one; DPM-Solver may
  // return fewer than requested after dropping duplicates). Euler-family values are the float32
  // (or, with Karras sigmas, float64) values upstream produces, stored as double.
  const std::vector<double>& timesteps() const { return timesteps_; }
  // Whether the timesteps are integers (DDIM, DPM-Solver, PNDM) rather than fractional (Euler).
  virtual bool integer_timesteps() const { return true; }
  // Standard deviation of the initial noise: multiply unit Gaussian latents by it.
  virtual double init_noise_sigma() const { return 1.0; }
  // The model input for step `step_index` (identity except for the Euler family).
  virtual at::Tensor scale_model_input(const at::Tensor& sample, size_t step_index) const;
  // True when step() draws fresh noise (Euler-ancestral, DPM-Solver's SDE variant): pass it as
  // `noise` for reproducible results, else it is drawn from the default generator as diffusers'
  // randn_tensor(shape) does, in logical order whatever the sample's memory layout.
  virtual bool needs_noise() const { return false; }
  // One denoising step at timesteps()[step_index]: returns the previous (less noisy) sample.
  virtual at::Tensor step(const at::Tensor& model_output, size_t step_index, const at::Tensor& sample,
                          const at::Tensor& noise = {}) = 0;
  // Noises clean latents to the timestep of `step_index` (image-to-image): √ᾱ·x + √(1−ᾱ)·ε
  // for DDIM, DPM-Solver and PNDM; x + σ·ε for the Euler family.
  virtual at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                               size_t step_index) const;

 protected:
  Scheduler(std::string name, std::string class_name, io::Json config);
  // Checks set_timesteps has run and `step_index` is in range; returns timesteps()[step_index].
  double timestep_at(size_t step_index, const char* op) const;
  void check_steps(int64_t steps) const;
  // Fails unless every one of `timesteps` lies in [0, num_train_timesteps), naming the settings
  // that produced it.
  void check_timestep_range(const std::vector<double>& timesteps, int64_t steps, const std::string& spacing,
                            int64_t steps_offset) const;
  // The noise of a stochastic step: `noise` when given (it must have the shape of `like`), else a
  // fresh draw of that shape, dtype and device.
  at::Tensor step_noise(const at::Tensor& noise, const at::Tensor& like) const;
  [[noreturn]] void fail_here(const std::string& what) const;

  std::string name_, class_name_;
  io::Json config_;
  NoiseSchedule schedule_;
  std::string prediction_type_;
  std::vector<double> timesteps_;
  int64_t num_inference_steps_ = 0;  // as requested by set_timesteps (0: not yet called)
};

// The kinds make_scheduler accepts: ddim, dpmpp-2m, dpmpp-2m-karras, dpmpp-2m-sde,
// dpmpp-2m-sde-karras, euler, euler-a, pndm.
std::vector<std::string> scheduler_kinds();

// Builds a scheduler of `kind` from a diffusers scheduler config (see the top of this file).
// The dpmpp-2m kinds are DPMSolverMultistepScheduler; -karras forces use_karras_sigmas on, -sde
// forces algorithm_type "sde-dpmsolver++"; every other setting comes from the file or the class
// defaults (so plain dpmpp-2m follows the file's algorithm_type). Unknown kinds, unsupported
// options and values of the wrong type are errors that name the key.
std::unique_ptr<Scheduler> make_scheduler(const std::string& kind, const io::Json& scheduler_config);

// The kind that follows the semantics of a diffusers scheduler class name ("PNDMScheduler" →
// "pndm"); empty when there is none.
std::string scheduler_kind_for_class(const std::string& class_name);

// DDPM's forward (noising) process and training targets, configured like DDPMScheduler.
class DDPMTraining {
 public:
  explicit DDPMTraining(const io::Json& scheduler_config);

  const io::Json& config() const { return config_; }
  const NoiseSchedule& schedule() const { return schedule_; }
  const at::Tensor& alphas_cumprod() const { return schedule_.alphas_cumprod; }  // float32 [N]
  int64_t num_train_timesteps() const { return schedule_.num_train_timesteps; }
  const std::string& prediction_type() const { return prediction_type_; }

  // `timesteps`: integer, [B] (one per item of x0's first dimension), [1] or 0-dim (broadcast),
  // each in [0, N). Arithmetic in x0's dtype on x0's device, as upstream.
  // √ᾱ_t·x0 + √(1−ᾱ_t)·ε
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const;
  // √ᾱ_t·ε − √(1−ᾱ_t)·x0
  at::Tensor velocity(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const;
  // What the model learns to predict: ε (epsilon), the velocity (v_prediction) or x0 (sample).
  at::Tensor target(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps) const;
  // Uniform integer timesteps in [0, N), int64 [batch] on `device`.
  at::Tensor random_timesteps(int64_t batch, const at::Device& device,
                              c10::optional<at::Generator> generator = c10::nullopt) const;

 private:
  io::Json config_;
  NoiseSchedule schedule_;
  std::string prediction_type_;
};

}  // namespace kosmosg::diffusion
