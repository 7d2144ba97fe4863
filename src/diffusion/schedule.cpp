// NoiseSchedule, the NumPy-exact helpers and the config helpers shared by the schedulers.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "diffusion/internal.h"
#include "kosmosg/error.h"

namespace kosmosg::diffusion {

namespace {

// betas_for_alpha_bar(N, max_beta=0.999, "cosine") of diffusers, in Python floats.
at::Tensor cosine_betas(int64_t n) {
  auto alpha_bar = [](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
  };
  std::vector<double> betas(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / static_cast<double>(n);
    const double t2 = static_cast<double>(i + 1) / static_cast<double>(n);
    betas[static_cast<size_t>(i)] = std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999);
  }
  return at::tensor(betas, at::kDouble).to(at::kFloat);
}

// rescale_zero_terminal_snr of diffusers' DDIM (arXiv 2305.08891, Algorithm 1), in float32.
at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas) {
  auto alphas = at::rsub(betas, 1.0);
  auto alphas_bar_sqrt = at::cumprod(alphas, 0).sqrt();
  auto first = alphas_bar_sqrt[0].clone();
  auto last = alphas_bar_sqrt[-1].clone();
  alphas_bar_sqrt = alphas_bar_sqrt - last;
  alphas_bar_sqrt = alphas_bar_sqrt * (first / (first - last));
  auto alphas_bar = alphas_bar_sqrt.pow(2);
  auto rest = alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1);
  alphas = at::cat({alphas_bar.slice(0, 0, 1), rest});
  return at::rsub(alphas, 1);
}

}  // namespace

NoiseSchedule NoiseSchedule::make(int64_t num_train_timesteps, double beta_start, double beta_end,
                                  const std::string& beta_schedule,
                                  const std::vector<double>& trained_betas, bool rescale_zero_snr,
                                  bool allow_sigmoid, const std::string& what) {
  if (num_train_timesteps < 1)
    fail(what, "num_train_timesteps is " + std::to_string(num_train_timesteps) + "; it must be at least 1");
  at::Tensor betas;
  if (!trained_betas.empty()) {
    if (static_cast<int64_t>(trained_betas.size()) != num_train_timesteps)
      fail(what, "trained_betas has " + std::to_string(trained_betas.size()) +
                     " values but num_train_timesteps is " + std::to_string(num_train_timesteps));
    betas = at::tensor(trained_betas, at::kDouble).to(at::kFloat);
  } else if (beta_schedule == "linear") {
    betas = at::linspace(beta_start, beta_end, num_train_timesteps, at::kFloat);
  } else if (beta_schedule == "scaled_linear") {
    // Python's `beta_start**0.5` is pow(x, 0.5); use the same function for identical bits.
    betas = at::linspace(std::pow(beta_start, 0.5), std::pow(beta_end, 0.5), num_train_timesteps, at::kFloat)
                .pow(2);
  } else if (beta_schedule == "squaredcos_cap_v2") {
    betas = cosine_betas(num_train_timesteps);
  } else if (beta_schedule == "sigmoid" && allow_sigmoid) {
    betas = at::sigmoid(at::linspace(-6, 6, num_train_timesteps, at::kFloat)) * (beta_end - beta_start) +
            beta_start;
  } else {
    fail(what, "beta_schedule '" + beta_schedule + "' is not supported (linear, scaled_linear, squaredcos_cap_v2" +
                   std::string(allow_sigmoid ? ", sigmoid" : "") + ", or trained_betas)");
  }
  if (rescale_zero_snr) betas = rescale_zero_terminal_snr(betas);

  NoiseSchedule s;
  s.num_train_timesteps = num_train_timesteps;
  s.betas = betas.contiguous();
  s.alphas_cumprod = at::cumprod(at::rsub(s.betas, 1.0), 0).contiguous();
  const float* p = s.alphas_cumprod.data_ptr<float>();
  s.acp.assign(p, p + num_train_timesteps);
  return s;
}

float NoiseSchedule::alpha_cumprod(int64_t t) const {
  if (t < 0 || t >= num_train_timesteps)
    fail("scheduler", "timestep " + std::to_string(t) + " is outside [0, " +
                          std::to_string(num_train_timesteps - 1) + "]");
  return acp[static_cast<size_t>(t)];
}

namespace detail {

double np_round(double x) {
  // rint rounds half to even in the default rounding mode, like NumPy.
  return std::nearbyint(x);
}

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  if (num <= 0) return {};
  std::vector<double> y(static_cast<size_t>(num));
  const int64_t div = num - 1;
  const double delta = stop - start;
  if (div > 0) {
    const double step = delta / static_cast<double>(div);
    for (int64_t i = 0; i < num; ++i)
      y[static_cast<size_t>(i)] = step == 0 ? static_cast<double>(i) / static_cast<double>(div) * delta
                                             : static_cast<double>(i) * step;
  } else {
    for (int64_t i = 0; i < num; ++i) y[static_cast<size_t>(i)] = static_cast<double>(i) * delta;
  }
  for (auto& v : y) v += start;
  if (num > 1) y.back() = stop;
  return y;
}

std::vector<double> np_arange(double start, double stop, double step) {
  if (step == 0) fail("scheduler", "arange step is zero");
  const double len_f = std::ceil((stop - start) / step);
  if (!(len_f > 0)) return {};
  const auto len = static_cast<size_t>(len_f);
  std::vector<double> y(len);
  y[0] = start;
  if (len > 1) {
    const double second = start + step;
    const double delta = second - start;
    y[1] = second;
    for (size_t i = 2; i < len; ++i) y[i] = start + static_cast<double>(i) * delta;
  }
  return y;
}

std::vector<double> np_interp_index(const std::vector<double>& x, const std::vector<float>& fp) {
  const auto n = static_cast<int64_t>(fp.size());
  if (n == 0) fail("scheduler", "interpolation table is empty");
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    if (std::isnan(v)) {
      out[i] = v;
    } else if (v < 0) {
      out[i] = fp.front();
    } else if (v >= static_cast<double>(n - 1)) {
      out[i] = fp.back();
    } else {
      const auto j = static_cast<int64_t>(std::floor(v));
      const double xj = static_cast<double>(j);
      const double yj = fp[static_cast<size_t>(j)], yj1 = fp[static_cast<size_t>(j + 1)];
      if (xj == v) {
        out[i] = yj;
      } else {
        const double slope = (yj1 - yj) / (static_cast<double>(j + 1) - xj);
        out[i] = slope * (v - xj) + yj;
        if (std::isnan(out[i])) out[i] = slope * (v - static_cast<double>(j + 1)) + yj1;
      }
    }
  }
  return out;
}

std::vector<double> karras_sigmas(double in_first, double in_last, int64_t num) {
  const double sigma_min = in_last, sigma_max = in_first;
  const double rho = 7.0;
  const auto ramp = np_linspace(0, 1, num);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> out(ramp.size());
  for (size_t i = 0; i < ramp.size(); ++i)
    out[i] = std::pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
  return out;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const auto n = static_cast<int64_t>(log_sigmas.size());
  if (n < 2) fail("scheduler", "sigma_to_t needs at least 2 training timesteps");
  // np.log(float64 scalar) - float32 array: NumPy 1.x casts the scalar to float32.
  const auto log_sigma = static_cast<float>(std::log(sigma));
  // argmax of cumsum(dists >= 0): the first index holding the maximum count.
  int64_t count = 0, best = -1, low_idx = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float dist = log_sigma - log_sigmas[static_cast<size_t>(i)];
    if (dist >= 0) ++count;
    if (count > best) best = count, low_idx = i;
  }
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const float low = log_sigmas[static_cast<size_t>(low_idx)];
  const float high = log_sigmas[static_cast<size_t>(high_idx)];
  float w = (low - log_sigma) / (low - high);
  w = std::min(std::max(w, 0.0f), 1.0f);
  // float32 weights times int64 indices: NumPy computes in float64.
  return static_cast<double>(1.0f - w) * static_cast<double>(low_idx) +
         static_cast<double>(w) * static_cast<double>(high_idx);
}

std::vector<float> float_vector(const at::Tensor& t) {
  auto c = t.to(at::kCPU, at::kFloat).contiguous();
  const float* p = c.data_ptr<float>();
  return std::vector<float>(p, p + c.numel());
}

io::Json merge_config(const io::Json& defaults, const io::Json& file, const std::string& what) {
  if (!file.is_object()) fail(what, "the scheduler config is not a JSON object");
  io::Json out = io::Json::object();
  for (const auto& [key, value] : defaults.items()) {
    auto it = file.find(key);
    out[key] = (it != file.end() && !it->is_null()) ? *it : value;
  }
  return out;
}

io::Json common_defaults() {
  return {{"num_train_timesteps", 1000},
          {"beta_start", 0.0001},
          {"beta_end", 0.02},
          {"beta_schedule", "linear"},
          {"trained_betas", nullptr}};
}

NoiseSchedule schedule_from_config(const io::Json& config, const std::string& what, bool allow_sigmoid) {
  const auto n = io::config_require<int64_t>(config, "num_train_timesteps", what);
  const auto beta_start = io::config_require<double>(config, "beta_start", what);
  const auto beta_end = io::config_require<double>(config, "beta_end", what);
  const auto schedule = io::config_require<std::string>(config, "beta_schedule", what);
  const auto trained = io::config_value<std::vector<double>>(config, "trained_betas", {}, what);
  if (config.contains("trained_betas") && config["trained_betas"].is_array() && trained.empty())
    fail(what, "trained_betas is an empty list");
  const bool rescale = io::config_value<bool>(config, "rescale_betas_zero_snr", false, what);
  return NoiseSchedule::make(n, beta_start, beta_end, schedule, trained, rescale, allow_sigmoid, what);
}

std::string prediction_type_of(const io::Json& config, const std::vector<std::string>& allowed,
                               const std::string& what) {
  const auto p = io::config_require<std::string>(config, "prediction_type", what);
  if (std::find(allowed.begin(), allowed.end(), p) == allowed.end()) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    fail(what, "prediction_type '" + p + "' is not supported (" + list + ")");
  }
  return p;
}

std::string spacing_of(const io::Json& config, const std::string& what) {
  const auto s = io::config_require<std::string>(config, "timestep_spacing", what);
  if (s != "linspace" && s != "leading" && s != "trailing")
    fail(what, "timestep_spacing '" + s + "' is not supported (linspace, leading, trailing)");
  return s;
}

void reject_true(const io::Json& config, const std::string& key, const std::string& what,
                 const std::string& why) {
  if (io::config_value<bool>(config, key, false, what))
    fail(what, key + " true is not supported (" + why + ")");
}

std::pair<at::Tensor, at::Tensor> noising_coefficients(const NoiseSchedule& schedule, const at::Tensor& x,
                                                       const at::Tensor& timesteps, const std::string& where) {
  if (!x.defined() || x.dim() < 1) fail(where, "the samples must be a tensor with a batch dimension");
  if (!timesteps.defined()) fail(where, "no timesteps given");
  if (at::isFloatingType(timesteps.scalar_type()) || timesteps.scalar_type() == at::kBool)
    fail(where, std::string("timesteps must be integers, got ") + c10::toString(timesteps.scalar_type()));
  const int64_t k = timesteps.numel();
  if (k != 1 && k != x.size(0))
    fail(where, "got " + std::to_string(k) + " timesteps for a batch of " + std::to_string(x.size(0)) +
                    " (give one per item, or one for all)");
  auto t = timesteps.to(x.device(), at::kLong).flatten();
  const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
  const int64_t n = schedule.num_train_timesteps;
  if (lo < 0 || hi >= n)
    fail(where, "timesteps span [" + std::to_string(lo) + ", " + std::to_string(hi) + "] but must lie in [0, " +
                    std::to_string(n - 1) + "]");
  // Upstream casts ᾱ to the sample's dtype and device, then indexes.
  auto a = schedule.alphas_cumprod.to(x.device(), x.scalar_type()).index_select(0, t);
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = k;
  return {a.pow(0.5).view(shape), at::rsub(a, 1).pow(0.5).view(shape)};
}

at::Tensor add_noise(const NoiseSchedule& schedule, const at::Tensor& x, const at::Tensor& noise,
                     const at::Tensor& timesteps, const std::string& where) {
  if (!x.defined() || !noise.defined() || noise.sizes() != x.sizes())
    fail(where, "the noise must have the samples' shape " + (x.defined() ? c10::str(x.sizes()) : "") +
                    (noise.defined() ? ", got " + c10::str(noise.sizes()) : ", got none"));
  auto [sqrt_a, sqrt_1ma] = noising_coefficients(schedule, x, timesteps, where);
  return sqrt_a * x + sqrt_1ma * noise;
}

}  // namespace detail
}  // namespace kosmosg::diffusion
