#include "kosmosg/models/controlnet.h"

#include <torch/torch.h>

#include <filesystem>

#include "kosmosg/error.h"
#include "kosmosg/io/weights.h"
#include "models/config_checks.h"
#include "models/unet_blocks.h"

namespace kosmosg::models {
namespace {

namespace fs = std::filesystem;

const char* const kWhat = "ControlNetModel config";

torch::nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1) {
  return torch::nn::Conv2d(
      torch::nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2));
}

std::string mirrored_up_block(const std::string& down) {
  return down == "CrossAttnDownBlock2D" ? "CrossAttnUpBlock2D" : "UpBlock2D";
}

template <typename T>
std::string dump(const T& value) {
  return io::Json(value).dump();
}

}  // namespace

ControlNetConfig ControlNetConfig::from_json(const io::Json& json) {
  if (!json.is_object()) fail("config", std::string(kWhat) + " is not a JSON object");
  // A ControlNet has no up path: the shared UNet parser gets mirrored up blocks so that its
  // per-block checks run, and the mid block ControlNet always has.
  io::Json shared = json;
  auto downs = io::config_value<std::vector<std::string>>(
      json, "down_block_types",
      {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}, kWhat);
  std::vector<std::string> ups;
  for (auto it = downs.rbegin(); it != downs.rend(); ++it) ups.push_back(mirrored_up_block(*it));
  shared["down_block_types"] = downs;
  shared["up_block_types"] = ups;
  shared["mid_block_type"] = "UNetMidBlock2DCrossAttn";
  ControlNetConfig c;
  c.unet = UNet2DConditionConfig::from_json(shared);
  c.conditioning_embedding_out_channels = io::config_value<std::vector<int64_t>>(
      json, "conditioning_embedding_out_channels", {16, 32, 96, 256}, kWhat);
  if (c.conditioning_embedding_out_channels.empty())
    fail("config", std::string(kWhat) + ": conditioning_embedding_out_channels is empty");
  c.conditioning_channels = io::config_value<int64_t>(json, "conditioning_channels", 3, kWhat);
  c.controlnet_conditioning_channel_order =
      io::config_value<std::string>(json, "controlnet_conditioning_channel_order", "rgb", kWhat);
  if (c.controlnet_conditioning_channel_order != "rgb" &&
      c.controlnet_conditioning_channel_order != "bgr")
    fail("config", std::string(kWhat) + ": controlnet_conditioning_channel_order is \"" +
                       c.controlnet_conditioning_channel_order + "\"; expected \"rgb\" or \"bgr\"");
  c.global_pool_conditions = io::config_value<bool>(json, "global_pool_conditions", false, kWhat);
  return c;
}

int64_t ControlNetConfig::cond_scale() const {
  return int64_t{1} << (conditioning_embedding_out_channels.size() - 1);
}

namespace blocks {

ControlNetConditioningEmbeddingImpl::ControlNetConditioningEmbeddingImpl(
    int64_t conditioning_channels, const std::vector<int64_t>& block_out_channels,
    int64_t embedding_channels) {
  const auto& ch = block_out_channels;
  conv_in = register_module("conv_in", conv(conditioning_channels, ch[0], 3));
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (size_t i = 0; i + 1 < ch.size(); ++i) {
    blocks->push_back(conv(ch[i], ch[i], 3));
    blocks->push_back(conv(ch[i], ch[i + 1], 3, 2));
  }
  conv_out = register_module("conv_out", conv(ch.back(), embedding_channels, 3));
}

at::Tensor ControlNetConditioningEmbeddingImpl::forward(const at::Tensor& image) {
  auto c = at::silu(conv_in(image));
  for (const auto& block : *blocks) c = at::silu(block->as<torch::nn::Conv2d>()->forward(c));
  return conv_out(c);
}

}  // namespace blocks

ControlNetModelImpl::ControlNetModelImpl(const ControlNetConfig& config) : config_(config) {
  const auto& u = config_.unet;
  const auto& ch = u.block_out_channels;
  conv_in = register_module("conv_in", conv(u.in_channels, ch[0], 3));
  time_embedding = register_module("time_embedding", blocks::make_unet_time_embedding(u));
  controlnet_cond_embedding = register_module(
      "controlnet_cond_embedding",
      blocks::ControlNetConditioningEmbedding(config_.conditioning_channels,
                                              config_.conditioning_embedding_out_channels, ch[0]));

  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  controlnet_down_blocks = register_module("controlnet_down_blocks", torch::nn::ModuleList());
  controlnet_down_blocks->push_back(conv(ch[0], ch[0], 1));
  for (size_t i = 0; i < ch.size(); ++i) {
    down_blocks->push_back(blocks::make_unet_down_block(u, i));
    for (int64_t l = 0; l < u.layers_per_block[i]; ++l)
      controlnet_down_blocks->push_back(conv(ch[i], ch[i], 1));
    if (i + 1 < ch.size()) controlnet_down_blocks->push_back(conv(ch[i], ch[i], 1));
  }
  mid_block = register_module("mid_block", blocks::make_unet_mid_block(u));
  controlnet_mid_block = register_module("controlnet_mid_block", conv(ch.back(), ch.back(), 1));
}

UNetResiduals ControlNetModelImpl::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                           const at::Tensor& encoder_hidden_states,
                                           const at::Tensor& controlnet_cond,
                                           double conditioning_scale) {
  const auto& u = config_.unet;
  const char* what = "ControlNetModel";
  if (sample.dim() != 4 || sample.size(1) != u.in_channels)
    fail(what, "sample has shape " + c10::str(sample.sizes()) + "; expected [B, " +
                   std::to_string(u.in_channels) + ", h, w]");
  const int64_t batch = sample.size(0), s = config_.cond_scale();
  const std::vector<int64_t> cond_shape{batch, config_.conditioning_channels, s * sample.size(2),
                                        s * sample.size(3)};
  if (controlnet_cond.sizes() != at::IntArrayRef(cond_shape))
    fail(what, "the control image has shape " + c10::str(controlnet_cond.sizes()) + "; expected " +
                   c10::str(at::IntArrayRef(cond_shape)) + " (" + std::to_string(s) +
                   "x the latents)");
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != batch ||
      encoder_hidden_states.size(2) != u.cross_attention_dim[0])
    fail(what, "encoder_hidden_states has shape " + c10::str(encoder_hidden_states.sizes()) +
                   "; expected [" + std::to_string(batch) + ", L, " +
                   std::to_string(u.cross_attention_dim[0]) + "]");

  const auto dtype = conv_in->weight.scalar_type();
  auto t = broadcast_timesteps(timestep, batch, what).to(sample.device());
  auto emb = time_embedding(
      blocks::timestep_sinusoids(t, u.block_out_channels[0], u.flip_sin_to_cos, u.freq_shift).to(dtype));

  auto image = controlnet_cond.to(sample.options());
  if (config_.controlnet_conditioning_channel_order == "bgr") image = image.flip({1});
  auto h = conv_in(sample) + controlnet_cond_embedding(image);

  std::vector<at::Tensor> skips{h};
  for (const auto& block : *down_blocks)
    h = block->as<blocks::DownBlock>()->forward(h, emb, encoder_hidden_states, &skips);
  h = mid_block(h, emb, encoder_hidden_states);

  auto finish = [&](at::Tensor r) {
    if (config_.global_pool_conditions) r = r.mean({2, 3}, true);
    return r * conditioning_scale;
  };
  UNetResiduals out;
  for (size_t i = 0; i < skips.size(); ++i)
    out.down.push_back(finish(controlnet_down_blocks[i]->as<torch::nn::Conv2d>()->forward(skips[i])));
  out.mid = finish(controlnet_mid_block(h));
  return out;
}

ControlNetModel load_controlnet(const std::string& dir) {
  const char* what = "controlnet";
  const fs::path root(dir);
  if (!fs::is_directory(root)) fail(what, dir + " is not a folder (expected a diffusers ControlNetModel folder)");
  if (fs::exists(root / "model_index.json"))
    fail(what, dir + " is a whole pipeline folder (it has model_index.json); expected a ControlNetModel folder");
  if (!fs::exists(root / "config.json"))
    fail(what, dir + " has no config.json (expected a diffusers ControlNetModel folder)");
  const auto json = io::read_json((root / "config.json").string());
  const auto class_name = json.is_object() && json.contains("_class_name") && json["_class_name"].is_string()
                              ? json["_class_name"].get<std::string>()
                              : std::string();
  if (class_name != "ControlNetModel")
    fail(what, dir + " holds a " + (class_name.empty() ? std::string("model without _class_name") : class_name) +
                   ", not a ControlNetModel");
  auto model = detail::build_module<ControlNetModel>(ControlNetConfig::from_json(json), (root / "config.json").string());
  io::LoadOptions options;
  options.source_name = dir;
  io::load_weights(*model, io::read_component_weights(dir, {"diffusion_pytorch_model"}), options);
  model->eval();
  return model;
}

void check_controlnet_fits(const ControlNetConfig& controlnet, const UNet2DConditionConfig& unet,
                           const std::string& name) {
  const auto& c = controlnet.unet;
  auto differ = [&](const std::string& key, const std::string& theirs, const std::string& ours) {
    fail("controlnet", name + " does not fit this model's UNet: its " + key + " is " + theirs +
                           ", the UNet's is " + ours);
  };
  if (c.block_out_channels != unet.block_out_channels)
    differ("block_out_channels", dump(c.block_out_channels), dump(unet.block_out_channels));
  if (c.layers_per_block != unet.layers_per_block)
    differ("layers_per_block", dump(c.layers_per_block), dump(unet.layers_per_block));
  if (c.down_block_types != unet.down_block_types)
    differ("down_block_types", dump(c.down_block_types), dump(unet.down_block_types));
  if (c.cross_attention_dim[0] != unet.cross_attention_dim[0])
    differ("cross_attention_dim", std::to_string(c.cross_attention_dim[0]),
           std::to_string(unet.cross_attention_dim[0]));
  if (c.in_channels != unet.in_channels)
    differ("in_channels", std::to_string(c.in_channels), std::to_string(unet.in_channels));
}

}  // namespace kosmosg::models
