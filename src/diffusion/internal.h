#pragma once
// Internals shared by the scheduler implementations: NumPy-exact helpers for the timestep and
// sigma computations diffusers does with NumPy, class-default config merging, and the
// constructors of the concrete schedulers.
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kosmosg/diffusion/scheduler.h"

namespace kosmosg::diffusion::detail {

// --- NumPy 1.x semantics -------------------------------------------------------------------

// np.round / np.rint: round half to even.
double np_round(double x);
// np.linspace(start, stop, num) in float64 (endpoint included, the last value is `stop`).
std::vector<double> np_linspace(double start, double stop, int64_t num);
// np.arange(start, stop, step) in float64: length ceil((stop − start)/step), value i = start + i·δ
// with δ = (start + step) − start, as NumPy fills it.
std::vector<double> np_arange(double start, double stop, double step);
// np.interp(x, arange(len(fp)), fp) in float64.
std::vector<double> np_interp_index(const std::vector<double>& x, const std::vector<float>& fp);
// EulerDiscreteScheduler._convert_to_karras: ρ = 7 interpolation from in_first to in_last.
std::vector<double> karras_sigmas(double in_first, double in_last, int64_t num);
// EulerDiscreteScheduler._sigma_to_t for one float64 σ against a float32 log-σ table (the
// NumPy 1.x value-based casting makes the distance computation float32).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);

// The values of a float32 CPU tensor.
std::vector<float> float_vector(const at::Tensor& t);

// --- configs --------------------------------------------------------------------------------

// The class's effective config: every key of `defaults`, taken from `file` when present and not
// null. `what` names the class in errors.
io::Json merge_config(const io::Json& defaults, const io::Json& file, const std::string& what);

// The common keys of every scheduler class (num_train_timesteps 1000, beta_start 0.0001,
// beta_end 0.02, beta_schedule "linear", trained_betas null).
io::Json common_defaults();

// Builds the NoiseSchedule from an effective config.
NoiseSchedule schedule_from_config(const io::Json& config, const std::string& what,
                                   bool allow_sigmoid = false);

// Reads prediction_type and checks it against `allowed`.
std::string prediction_type_of(const io::Json& config, const std::vector<std::string>& allowed,
                               const std::string& what);
// Reads timestep_spacing and checks it is linspace, leading or trailing.
std::string spacing_of(const io::Json& config, const std::string& what);
// Fails when config[key] is true (an option this implementation does not support).
void reject_true(const io::Json& config, const std::string& key, const std::string& what,
                 const std::string& why);

// (√ᾱ_t, √(1−ᾱ_t)) in x's dtype on x's device (ᾱ is cast before indexing, as upstream), shaped
// to broadcast against x. `timesteps`: integers in [0, N), [B] (one per item of x's first
// dimension), [1] or 0-dim. `where` names the caller in errors.
std::pair<at::Tensor, at::Tensor> noising_coefficients(const NoiseSchedule& schedule, const at::Tensor& x,
                                                       const at::Tensor& timesteps, const std::string& where);
// The forward process √ᾱ_t·x + √(1−ᾱ_t)·ε (diffusers' add_noise); the noise must have x's shape.
at::Tensor add_noise(const NoiseSchedule& schedule, const at::Tensor& x, const at::Tensor& noise,
                     const at::Tensor& timesteps, const std::string& where);

// --- concrete schedulers ----------------------------------------------------------------------

std::unique_ptr<Scheduler> make_ddim(const std::string& kind, const io::Json& file);
// `forced`: keys the kind sets whatever the file says (use_karras_sigmas, algorithm_type).
std::unique_ptr<Scheduler> make_dpm_solver(const std::string& kind, const io::Json& file, const io::Json& forced);
std::unique_ptr<Scheduler> make_euler(const std::string& kind, const io::Json& file, bool ancestral);
std::unique_ptr<Scheduler> make_pndm(const std::string& kind, const io::Json& file);

}  // namespace kosmosg::diffusion::detail
