#include "kosmosg/pipeline/diffusion.h"

#include <filesystem>

#include "kosmosg/diffusion/scheduler.h"
#include "kosmosg/error.h"
#include "kosmosg/io/control_image.h"
#include "kosmosg/io/image.h"
#include "kosmosg/io/weights.h"
#include "kosmosg/nn/lora.h"
#include "kosmosg/util/progress.h"
#include "models/config_checks.h"
#include "pipeline/unet_graph.h"

namespace kosmosg::pipeline {

namespace fs = std::filesystem;

namespace {

// Checks a classifier-free guidance scale: a finite number from 0 to 100 (an infinite one turns
// every image black, and beyond 100 the result is noise).
void check_guidance(double guidance) {
  constexpr double kMaxGuidance = 100;
  if (!(guidance >= 0 && guidance <= kMaxGuidance))
    fail_setting("guidance", "guidance", "{} " + c10::str(guidance) + " must be a finite number from 0 to " +
                                             c10::str(kMaxGuidance) + " (<= 1 disables guidance)");
}

// The step image-to-image starts from: as diffusers' img2img, int(steps · strength) steps remain,
// counted from the schedule's end. 0 (all steps) without an initial image or at strength 1.
size_t first_step(const GenerateOptions& options) {
  if (!options.init_image || options.strength >= 1.0) return 0;
  const int64_t steps = options.sampling.steps;
  const int64_t kept = std::min(static_cast<int64_t>(steps * options.strength), steps);
  return static_cast<size_t>(steps - kept);
}

}  // namespace

void DiffusionDecoder::check_controlnet(const ControlNetGuide& guide) const {
  const std::string name = guide.name.empty() ? std::string("a ControlNet") : guide.name;
  if (!guide.model) fail("controlnet", name + ": no model given");
  models::check_controlnet_fits(guide.model->config(), unet_->config(), name);
  if (!(0.0 <= guide.start && guide.start < guide.end && guide.end <= 1.0))
    fail("controlnet", name + ": the guidance window " + c10::str(guide.start) + " to " +
                           c10::str(guide.end) + " must satisfy 0 <= start < end <= 1");
  if (!std::isfinite(guide.scale))
    fail("controlnet", name + ": the conditioning scale must be a finite number");
  const auto& image = guide.image;
  if (!image.defined() || image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != at::kByte)
    fail("controlnet", name + ": the control image must be uint8 H×W×3 RGB");
}

DiffusionDecoder::DiffusionDecoder(models::UNet2DConditionModel unet, models::AutoencoderKL vae,
                                   io::Json scheduler_config)
    : unet_(std::move(unet)), vae_(std::move(vae)), scheduler_config_(std::move(scheduler_config)) {
  unet_->eval();
  vae_->eval();
  nn::set_weight_packing(*unet_, pack_unet_weights_);
}

DiffusionDecoder DiffusionDecoder::from_folder(const std::string& dir) {
  const fs::path root(dir);
  const std::string unet_json = (root / "unet" / "config.json").string();
  auto unet = models::detail::build_module<models::UNet2DConditionModel>(
      models::UNet2DConditionConfig::from_json(io::read_json(unet_json)), unet_json);
  io::LoadOptions unet_load;
  unet_load.source_name = (root / "unet").string();
  io::load_weights(*unet, io::read_component_weights((root / "unet").string(), {"diffusion_pytorch_model"}), unet_load);

  const std::string vae_json = (root / "vae" / "config.json").string();
  auto vae = models::detail::build_module<models::AutoencoderKL>(
      models::AutoencoderKLConfig::from_json(io::read_json(vae_json)), vae_json);
  io::LoadOptions vae_load;
  vae_load.source_name = (root / "vae").string();
  io::load_weights(*vae, io::read_component_weights((root / "vae").string(), {"diffusion_pytorch_model"}), vae_load);

  auto scheduler = io::read_json((root / "scheduler" / "scheduler_config.json").string());
  return DiffusionDecoder(std::move(unet), std::move(vae), std::move(scheduler));
}

int64_t DiffusionDecoder::vae_scale() const {
  return int64_t{1} << (vae_->config().block_out_channels.size() - 1);
}

int64_t DiffusionDecoder::native_size() const { return unet_->config().sample_size * vae_scale(); }

void DiffusionDecoder::to(const c10::Device& device, c10::ScalarType dtype) {
  nn::set_weight_packing(*unet_, false);
  unet_->to(device, dtype);
  nn::set_weight_packing(*unet_, pack_unet_weights_);
  vae_->to(device, dtype);
}

void DiffusionDecoder::store_block_weights(c10::ScalarType dtype) {
  pack_unet_weights_ = false;
  nn::set_weight_packing(*unet_, false);
  unet_->store_block_weights(dtype);
}

at::Tensor DiffusionDecoder::initial_latents(int64_t count, int64_t height, int64_t width,
                                             at::Generator generator) const {
  const int64_t scale = vae_scale();
  return at::randn({count, unet_->config().in_channels, height / scale, width / scale}, generator,
                   at::TensorOptions().dtype(at::kFloat));
}

at::Tensor DiffusionDecoder::sample(const at::Tensor& condition, const at::Tensor& latents,
                                    const SamplingOptions& options, at::Generator generator,
                                    const StepCallback& on_step,
                                    const std::vector<ControlNetGuide>& controlnets) {
  for (const auto& guide : controlnets) check_controlnet(guide);
  auto scheduler = diffusion::make_scheduler(options.sampler, scheduler_config_);
  scheduler->set_timesteps(options.steps);
  return denoise(*scheduler, latents * scheduler->init_noise_sigma(), 0, condition, options,
                 {generator}, on_step, controlnets);
}

at::Tensor DiffusionDecoder::denoise(diffusion::Scheduler& scheduler, at::Tensor x,
                                     size_t first_step, const at::Tensor& condition,
                                     const SamplingOptions& options,
                                     const std::vector<at::Generator>& generators,
                                     const StepCallback& on_step,
                                     const std::vector<ControlNetGuide>& controlnets) {
  torch::NoGradGuard no_grad;
  const bool guided = options.guidance > 1.0;
  const int64_t batch = x.size(0);
  if (generators.size() != 1 && static_cast<int64_t>(generators.size()) != batch)
    fail("sample", std::to_string(generators.size()) + " noise generators for " + std::to_string(batch) +
                       " latents (expected one, or one per latent)");
  const int64_t expected_rows = guided ? 2 * batch : batch;
  if (condition.size(0) != expected_rows)
    fail("sample", "the condition has " + std::to_string(condition.size(0)) + " rows but " +
                       std::to_string(batch) + " latents need " + std::to_string(expected_rows) +
                       (guided ? " (unconditional and conditional)" : ""));
  const auto param = unet_->parameters().front();
  const auto options_model = at::TensorOptions().dtype(param.scalar_type()).device(param.device());
  at::Tensor context = condition.to(options_model);
  x = x.to(param.device(), at::kFloat);
  const auto& timesteps = scheduler.timesteps();
  // Each control image once at the pixel size of the latents, repeated for every UNet row.
  std::vector<at::Tensor> control_images;
  for (const auto& guide : controlnets) {
    const int64_t s = guide.model->config().cond_scale();
    control_images.push_back(io::control_pixel_values(guide.image, s * x.size(3), s * x.size(2))
                                 .repeat({expected_rows, 1, 1, 1})
                                 .to(options_model));
  }
  std::unique_ptr<detail::UNetGraph> graph;
  const double run_steps = static_cast<double>(timesteps.size() - first_step);
  Progress progress("sampling", static_cast<int64_t>(timesteps.size() - first_step),
                    !options.show_progress);
  for (size_t i = first_step; i < timesteps.size(); ++i) {
    at::Tensor input = scheduler.scale_model_input(guided ? at::cat({x, x}) : x, i);
    // Made where the UNet runs: a host tensor's copy to a GPU would wait for the previous step
    // there, so the next step's kernels could not queue up behind it. A graph's replay fills its
    // own copy instead.
    at::Tensor t;
    if (!graph) t = at::full({1}, timesteps[i], at::TensorOptions().dtype(at::kDouble).device(param.device()));
    input = input.to(options_model);
    std::optional<models::UNetResiduals> residuals;
    for (size_t c = 0; c < controlnets.size(); ++c) {
      // diffusers' guidance window: active while step k of n has k/n >= start and (k+1)/n <= end.
      const auto& guide = controlnets[c];
      const double k = static_cast<double>(i - first_step);
      if (k / run_steps < guide.start || (k + 1) / run_steps > guide.end) continue;
      if (guide.scale == 0) continue;  // its residuals would all be zero
      models::ControlNetModel model = guide.model;  // a handle: forward is not const
      auto r = model->forward(input, t, context, control_images[c], guide.scale);
      if (!residuals) {
        residuals = std::move(r);
        continue;
      }
      for (size_t j = 0; j < r.down.size(); ++j) residuals->down[j] += r.down[j];
      residuals->mid += r.mid;
    }
    if (i == first_step && options.cuda_graph && controlnets.empty() && input.is_cuda())
      graph = detail::UNetGraph::capture(unet_, input, t, context);
    at::Tensor eps = graph ? graph->forward(input, timesteps[i])
                           : unet_->forward(input, t, context, residuals ? &*residuals : nullptr).to(at::kFloat);
    if (guided) {
      auto halves = eps.chunk(2);
      eps = halves[0] + options.guidance * (halves[1] - halves[0]);
    }
    at::Tensor noise;
    if (scheduler.needs_noise()) {
      const auto cpu_float = at::TensorOptions().dtype(at::kFloat);
      if (generators.size() == 1) {
        noise = at::randn(x.sizes(), generators[0], cpu_float);
      } else {
        auto row = x.sizes().vec();
        row[0] = 1;
        std::vector<at::Tensor> rows;
        for (const auto& g : generators) rows.push_back(at::randn(row, g, cpu_float));
        noise = at::cat(rows);
      }
      // Through pinned memory, for the same reason as the timestep: a pageable copy would wait.
      noise = x.is_cuda() ? noise.pin_memory().to(x.device(), /*non_blocking=*/true) : noise.to(x.device());
    }
    x = scheduler.step(eps, i, x, noise);
    if (on_step) on_step({i, timesteps[i], input, eps, x});
    progress.tick();
  }
  return x;
}

void check_image_size(int64_t width, int64_t height, int64_t scale) {
  constexpr int64_t kMaxSide = 4096;
  for (auto [name, v] : {std::pair<const char*, int64_t>{"width", width}, {"height", height}}) {
    if (v <= 0 || v % scale != 0)
      fail("size", std::string(name) + " " + std::to_string(v) + " must be a positive multiple of " +
                       std::to_string(scale));
    if (v > kMaxSide)
      fail("size", std::string(name) + " " + std::to_string(v) + " is larger than the " +
                       std::to_string(kMaxSide) + " pixels this tool accepts");
  }
}

void DiffusionDecoder::check(const GenerateOptions& options) const { prepare(options); }

std::unique_ptr<diffusion::Scheduler> DiffusionDecoder::prepare(const GenerateOptions& options) const {
  check_image_size(options.width, options.height, vae_scale());
  check_guidance(options.sampling.guidance);
  // The scheduler knows its kinds and the step counts its schedule allows.
  auto scheduler = diffusion::make_scheduler(options.sampling.sampler, scheduler_config_);
  scheduler->set_timesteps(options.sampling.steps);
  if (options.init_image) {
    if (!(options.strength > 0.0 && options.strength <= 1.0))
      fail_setting("strength", "strength", "{} " + c10::str(options.strength) +
                                               " must be in (0, 1] (the share of the schedule image-to-image runs)");
    if (first_step(options) >= scheduler->timesteps().size())
      fail_setting("strength", "strength", "{} " + c10::str(options.strength) + " leaves no step of " +
                                               std::to_string(options.sampling.steps) +
                                               " to run; raise it or the step count");
    const auto& image = *options.init_image;
    if (image.dim() != 3 || image.size(2) != 3 || image.scalar_type() != at::kByte)
      fail("init-image", "the initial image must be uint8 H×W×3 RGB, got " +
                             c10::str(image.sizes()) + " " + c10::toString(image.scalar_type()));
  }
  for (const auto& guide : options.controlnets) check_controlnet(guide);
  return scheduler;
}

std::pair<at::Tensor, at::Tensor> DiffusionDecoder::generate(const at::Tensor& condition,
                                                             const GenerateOptions& options,
                                                             const StepCallback& on_step) {
  return run(*prepare(options), condition, options, on_step);
}

std::pair<at::Tensor, at::Tensor> DiffusionDecoder::run(diffusion::Scheduler& scheduler, const at::Tensor& condition,
                                                        const GenerateOptions& options, const StepCallback& on_step) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  const at::Tensor noise = options.initial_latents
                               ? *options.initial_latents
                               : initial_latents(1, options.height, options.width, generator);
  at::Tensor x = noise * scheduler.init_noise_sigma();
  const size_t start = first_step(options);
  if (start > 0) {
    const auto pixels =
        io::control_pixel_values(*options.init_image, options.width, options.height) * 2.0 - 1.0;
    x = scheduler.add_noise(encode(pixels, generator), noise, start);
  }
  at::Tensor final_latents =
      denoise(scheduler, x, start, condition, options.sampling, {generator}, on_step, options.controlnets);
  return {final_latents, decode(final_latents)};
}

at::Tensor DiffusionDecoder::encode(const at::Tensor& images, at::Generator generator) {
  torch::NoGradGuard no_grad;
  const auto param = vae_->parameters().front();
  auto posterior = vae_->encode(images.to(param.options()));
  auto noise = at::randn(posterior.mean.sizes(), generator, at::TensorOptions().dtype(at::kFloat));
  return posterior.sample(noise.to(param.options())).to(at::kFloat) * vae_->config().scaling_factor;
}

at::Tensor DiffusionDecoder::decode(const at::Tensor& latents) {
  torch::NoGradGuard no_grad;
  const auto param = vae_->parameters().front();
  return vae_->decode((latents / vae_->config().scaling_factor).to(param.options())).to(at::kFloat);
}

at::Tensor to_uint8_images(const at::Tensor& images) {
  return (images.to(at::kCPU, at::kFloat) / 2 + 0.5)
      .clamp(0, 1)
      .mul(255)
      .round()
      .to(at::kByte)
      .permute({0, 2, 3, 1})
      .contiguous();
}

}  // namespace kosmosg::pipeline
