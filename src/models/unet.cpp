#include "kosmosg/models/unet.h"

#include <torch/torch.h>

#include <algorithm>

#include "kosmosg/error.h"
#include "models/config_checks.h"
#include "models/unet_blocks.h"
#include "nn/onednn.h"

namespace kosmosg::models {
namespace {

const char* const kUNetConfig = "UNet2DConditionModel config";

[[noreturn]] void unet_config_error(const std::string& key, const std::string& why) {
  fail("config", std::string(kUNetConfig) + ": key '" + key + "' " + why);
}

// An int or a list with one int per down block; `fallback` (replicated) when absent or null.
std::vector<int64_t> per_block_ints(const io::Json& json, const std::string& key, int64_t fallback,
                                    size_t blocks) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return std::vector<int64_t>(blocks, fallback);
  if (it->is_number_integer()) return std::vector<int64_t>(blocks, it->get<int64_t>());
  if (!it->is_array()) unet_config_error(key, "is " + io::brief(*it) + "; expected an integer or a list");
  std::vector<int64_t> values;
  for (const auto& v : *it) {
    if (!v.is_number_integer()) unet_config_error(key, "is " + io::brief(*it) + "; expected integers");
    values.push_back(v.get<int64_t>());
  }
  if (values.size() != blocks)
    unet_config_error(key, "has " + std::to_string(values.size()) +
                          " entries; expected one per down "
                          "block (" +
                          std::to_string(blocks) + ")");
  return values;
}

std::vector<bool> per_block_bools(const io::Json& json, const std::string& key, size_t blocks) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return std::vector<bool>(blocks, false);
  if (it->is_boolean()) return std::vector<bool>(blocks, it->get<bool>());
  if (!it->is_array() || it->size() != blocks)
    unet_config_error(key, "is " + io::brief(*it) + "; expected a boolean or one per down block");
  std::vector<bool> values;
  for (const auto& v : *it) {
    if (!v.is_boolean()) unet_config_error(key, "is " + io::brief(*it) + "; expected booleans");
    values.push_back(v.get<bool>());
  }
  return values;
}

void require_null(const io::Json& json, const std::string& key, const std::string& feature) {
  auto it = json.find(key);
  if (it != json.end() && !it->is_null())
    unet_config_error(key,
                 "is " + io::brief(*it) + ", but " + feature + " is not supported (expected null)");
}

template <typename T>
void require_value(const io::Json& json, const std::string& key, const T& supported) {
  const T value = io::config_value<T>(json, key, supported, kUNetConfig);
  if (value != supported)
    unet_config_error(key, "is " + io::brief(json.at(key)) + "; only " + io::Json(supported).dump() +
                          " is supported");
}

void check_types(const std::vector<std::string>& types, const std::string& key,
                 const std::vector<std::string>& supported) {
  for (const auto& t : types) {
    if (std::find(supported.begin(), supported.end(), t) == supported.end())
      unet_config_error(key, "contains \"" + t + "\"; supported: " + io::Json(supported).dump());
  }
}

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const io::Json& json) {
  if (!json.is_object()) fail("config", std::string(kUNetConfig) + " is not a JSON object");
  UNet2DConditionConfig c;
  c.in_channels = io::config_value<int64_t>(json, "in_channels", 4, kUNetConfig);
  c.out_channels = io::config_value<int64_t>(json, "out_channels", 4, kUNetConfig);
  c.sample_size = io::config_value<int64_t>(json, "sample_size", 0, kUNetConfig);
  c.center_input_sample = io::config_value<bool>(json, "center_input_sample", false, kUNetConfig);
  c.flip_sin_to_cos = io::config_value<bool>(json, "flip_sin_to_cos", true, kUNetConfig);
  c.freq_shift = io::config_value<double>(json, "freq_shift", 0.0, kUNetConfig);
  c.down_block_types = io::config_value<std::vector<std::string>>(
      json, "down_block_types",
      {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"},
      kUNetConfig);
  c.up_block_types = io::config_value<std::vector<std::string>>(
      json, "up_block_types",
      {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"}, kUNetConfig);
  auto mid = json.find("mid_block_type");
  c.mid_block_type = mid == json.end()
                         ? "UNetMidBlock2DCrossAttn"
                         : io::config_value<std::string>(json, "mid_block_type", "", kUNetConfig);
  c.block_out_channels = io::config_value<std::vector<int64_t>>(json, "block_out_channels",
                                                                {320, 640, 1280, 1280}, kUNetConfig);

  const size_t n = c.down_block_types.size();
  if (n == 0) unet_config_error("down_block_types", "is empty");
  if (c.up_block_types.size() != n)
    unet_config_error("up_block_types", "has " + std::to_string(c.up_block_types.size()) +
                                       " entries; expected as many as down_block_types (" +
                                       std::to_string(n) + ")");
  if (c.block_out_channels.size() != n)
    unet_config_error("block_out_channels", "has " + std::to_string(c.block_out_channels.size()) +
                                           " entries; expected one per down block (" +
                                           std::to_string(n) + ")");
  check_types(c.down_block_types, "down_block_types", {"CrossAttnDownBlock2D", "DownBlock2D"});
  check_types(c.up_block_types, "up_block_types", {"CrossAttnUpBlock2D", "UpBlock2D"});
  if (!c.mid_block_type.empty())
    check_types({c.mid_block_type}, "mid_block_type", {"UNetMidBlock2DCrossAttn"});

  c.layers_per_block = per_block_ints(json, "layers_per_block", 2, n);
  auto heads = json.find("num_attention_heads");
  c.attention_heads = heads != json.end() && !heads->is_null()
                          ? per_block_ints(json, "num_attention_heads", 8, n)
                          : per_block_ints(json, "attention_head_dim", 8, n);
  c.cross_attention_dim = per_block_ints(json, "cross_attention_dim", 1280, n);
  c.transformer_layers_per_block = per_block_ints(json, "transformer_layers_per_block", 1, n);
  c.only_cross_attention = per_block_bools(json, "only_cross_attention", n);
  c.downsample_padding = io::config_value<int64_t>(json, "downsample_padding", 1, kUNetConfig);
  c.mid_block_scale_factor = io::config_value<double>(json, "mid_block_scale_factor", 1.0, kUNetConfig);
  c.act_fn = io::config_value<std::string>(json, "act_fn", "silu", kUNetConfig);
  blocks::parse_activation(c.act_fn, std::string(kUNetConfig) + ": act_fn");
  auto groups = json.find("norm_num_groups");
  if (groups != json.end() && groups->is_null())
    unet_config_error("norm_num_groups", "is null, but a UNet without group norms is not supported");
  c.norm_num_groups = io::config_value<int64_t>(json, "norm_num_groups", 32, kUNetConfig);
  detail::require_positive(c.norm_num_groups, "norm_num_groups", kUNetConfig);
  c.norm_eps = io::config_value<double>(json, "norm_eps", 1e-5, kUNetConfig);
  c.use_linear_projection = io::config_value<bool>(json, "use_linear_projection", false, kUNetConfig);
  c.upcast_attention = io::config_value<bool>(json, "upcast_attention", false, kUNetConfig);
  c.time_embedding_type =
      io::config_value<std::string>(json, "time_embedding_type", "positional", kUNetConfig);
  if (c.time_embedding_type != "positional")
    unet_config_error("time_embedding_type",
                 "is \"" + c.time_embedding_type + "\"; only \"positional\" is supported");
  c.time_embedding_dim = io::config_value<int64_t>(json, "time_embedding_dim", 0, kUNetConfig);
  c.timestep_post_act = io::config_value<std::string>(json, "timestep_post_act", "", kUNetConfig);
  if (!c.timestep_post_act.empty())
    blocks::parse_activation(c.timestep_post_act, std::string(kUNetConfig) + ": timestep_post_act");
  c.conv_in_kernel = io::config_value<int64_t>(json, "conv_in_kernel", 3, kUNetConfig);
  c.conv_out_kernel = io::config_value<int64_t>(json, "conv_out_kernel", 3, kUNetConfig);
  detail::require_at_most_max(c.block_out_channels, "block_out_channels", kUNetConfig);
  detail::require_at_most_max(c.layers_per_block, "layers_per_block", kUNetConfig);
  detail::require_at_most_max(c.attention_heads, "attention_head_dim", kUNetConfig);
  detail::require_at_most_max(c.cross_attention_dim, "cross_attention_dim", kUNetConfig);
  detail::require_at_most_max(c.transformer_layers_per_block, "transformer_layers_per_block", kUNetConfig);
  detail::require_at_most_max({c.in_channels, c.out_channels, c.sample_size, c.time_embedding_dim, c.conv_in_kernel,
                               c.conv_out_kernel},
                              "in_channels, out_channels, sample_size, time_embedding_dim or conv_*_kernel", kUNetConfig);

  require_null(json, "class_embed_type", "a class embedding");
  require_null(json, "num_class_embeds", "a class embedding");
  require_null(json, "addition_embed_type", "an addition embedding");
  require_null(json, "encoder_hid_dim", "an encoder_hidden_states projection");
  require_null(json, "encoder_hid_dim_type", "an encoder_hidden_states projection");
  require_null(json, "time_cond_proj_dim", "a timestep condition projection");
  require_null(json, "time_embedding_act_fn", "an activation after the time embedding");
  require_null(json, "cross_attention_norm", "a cross-attention norm");
  require_value<bool>(json, "dual_cross_attention", false);
  require_value<std::string>(json, "attention_type", "default");
  require_value<std::string>(json, "resnet_time_scale_shift", "default");

  for (size_t i = 0; i < n; ++i) {
    const int64_t ch = c.block_out_channels[i];
    if (ch <= 0 || ch % c.norm_num_groups != 0)
      unet_config_error("block_out_channels", "entry " + std::to_string(ch) +
                                             " is not a positive multiple of norm_num_groups (" +
                                             std::to_string(c.norm_num_groups) + ")");
    if (c.attention_heads[i] <= 0 || ch % c.attention_heads[i] != 0)
      unet_config_error(
          heads != json.end() && !heads->is_null() ? "num_attention_heads" : "attention_head_dim",
          "gives " + std::to_string(c.attention_heads[i]) + " heads for block " +
              std::to_string(i) + " of " + std::to_string(ch) +
              " channels; the head count must divide the width");
  }
  return c;
}

at::Tensor broadcast_timesteps(const at::Tensor& timestep, int64_t batch, const std::string& what) {
  if (!timestep.defined()) fail(what, "no timestep given");
  if (timestep.scalar_type() == at::kBool || timestep.is_complex())
    fail(what, "timestep must be an integer or float tensor");
  auto t = timestep.dim() == 0 ? timestep.reshape({1}) : timestep;
  if (t.dim() != 1 || (t.size(0) != 1 && t.size(0) != batch))
    fail(what, "timestep has shape " + c10::str(timestep.sizes()) + "; expected [], [1] or [" +
                   std::to_string(batch) + "]");
  return t.expand({batch});
}

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& config)
    : config_(config) {
  const auto& c = config_;
  const size_t n = c.block_out_channels.size();
  const int64_t c0 = c.block_out_channels[0];
  conv_in = register_module(
      "conv_in", nn::LoRACompatibleConv(torch::nn::Conv2dOptions(c.in_channels, c0, c.conv_in_kernel)
                                       .padding((c.conv_in_kernel - 1) / 2)));
  time_embedding = register_module("time_embedding", blocks::make_unet_time_embedding(c));
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  for (size_t i = 0; i < n; ++i) down_blocks->push_back(blocks::make_unet_down_block(c, i));
  if (!c.mid_block_type.empty())
    mid_block = register_module("mid_block", blocks::make_unet_mid_block(c));
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  for (size_t i = 0; i < n; ++i) up_blocks->push_back(blocks::make_unet_up_block(c, i));
  conv_norm_out = register_module(
      "conv_norm_out",
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(c.norm_num_groups, c0).eps(c.norm_eps)));
  conv_out = register_module(
      "conv_out", nn::LoRACompatibleConv(torch::nn::Conv2dOptions(c0, c.out_channels, c.conv_out_kernel)
                                        .padding((c.conv_out_kernel - 1) / 2)));
}

void UNet2DConditionModelImpl::set_gradient_checkpointing(bool on, bool reentrant_compat) {
  checkpointing = {on, reentrant_compat};
}

void UNet2DConditionModelImpl::store_block_weights(c10::ScalarType dtype) {
  for (const auto& list : {down_blocks, up_blocks})
    for (const auto& block : *list) nn::store_block_weights(*block, dtype);
  if (!mid_block.is_empty()) nn::store_block_weights(*mid_block, dtype);
}

void UNet2DConditionModelImpl::set_cuda_channels_last(bool on) {
  cuda_channels_last_ = on;
  const auto format = on ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::NoGradGuard no_grad;
  for (auto& p : parameters())
    if (p.dim() == 4 && p.is_cuda()) p.set_data(p.contiguous(format));
}

at::Tensor UNet2DConditionModelImpl::forward(const at::Tensor& sample, const at::Tensor& timestep,
                                             const at::Tensor& encoder_hidden_states,
                                             const UNetResiduals* residuals) {
  const auto& c = config_;
  const char* what = "UNet2DConditionModel";
  if (sample.dim() != 4 || sample.size(1) != c.in_channels)
    fail(what, "sample has shape " + c10::str(sample.sizes()) + "; expected [B, " +
                   std::to_string(c.in_channels) + ", H, W]");
  const int64_t batch = sample.size(0);
  const auto& context = encoder_hidden_states;
  const bool one_cross_dim = std::all_of(c.cross_attention_dim.begin(), c.cross_attention_dim.end(),
                                         [&](int64_t d) { return d == c.cross_attention_dim[0]; });
  if (context.dim() != 3 || context.size(0) != batch ||
      (one_cross_dim && context.size(2) != c.cross_attention_dim[0]))
    fail(what, "encoder_hidden_states has shape " + c10::str(context.sizes()) + "; expected [" +
                   std::to_string(batch) + ", L, " + std::to_string(c.cross_attention_dim[0]) +
                   "]");

  // Shapes: sample [N, C_in, h, w], context [N, L, D]; C0..Ck are block_out_channels.
  // 1. time
  const auto dtype = conv_in->weight.scalar_type();
  auto t = broadcast_timesteps(timestep, batch, what).to(sample.device());  // [N]
  auto emb = blocks::timestep_sinusoids(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)
                 .to(dtype);  // [N, C0]
  emb = time_embedding(emb);  // [N, T]: time_embedding_dim, by default 4·C0

  // 2. pre-process
  auto h = c.center_input_sample ? sample * 2.0 - 1.0 : sample;
  // Inference runs channels-last where oneDNN serves the CPU, and on CUDA when asked: those
  // convolutions (and the Winograd path) take it without reordering, and the transformers'
  // tokens are views of it. Every layer keeps the layout; the result is handed back NCHW.
  const bool channels_last = !at::GradMode::is_enabled();
  if (channels_last)
    h = cuda_channels_last_ && h.is_cuda() ? h.contiguous(at::MemoryFormat::ChannelsLast)
                                           : nn::onednn::channels_last_on_cpu(h);
  h = conv_in(h);  // [N, C0, h, w]
  // Every resolution's features, kept for the up blocks' skip connections.
  std::vector<at::Tensor> skips{h};
  // 3. down: each block ends at [N, Ci, h/2^i, w/2^i] (the last one does not downsample).
  for (const auto& block : *down_blocks) {
    auto* b = block->as<blocks::DownBlock>();
    // The block's skip tensors come back as outputs; the last of them is its result.
    const auto produced = checkpointing.run(*this, *b, [b](const std::vector<at::Tensor>& in) {
      std::vector<at::Tensor> out;
      b->forward(in[0], in[1], in[2], &out);
      return out;
    }, {h, emb, context});
    skips.insert(skips.end(), produced.begin(), produced.end());
    if (!produced.empty()) h = produced.back();
  }
  // h: [N, Ck, h/2^k, w/2^k]

  // ControlNet residuals add onto the skips and the mid block's output, as diffusers does.
  if (residuals) {
    if (residuals->down.size() != skips.size())
      fail(what, "got " + std::to_string(residuals->down.size()) +
                     " down-block residuals; expected one per skip tensor (" +
                     std::to_string(skips.size()) + ")");
    for (size_t i = 0; i < skips.size(); ++i) {
      if (residuals->down[i].sizes() != skips[i].sizes())
        fail(what, "down-block residual " + std::to_string(i) + " has shape " +
                       c10::str(residuals->down[i].sizes()) + "; expected " + c10::str(skips[i].sizes()));
      skips[i] = skips[i] + residuals->down[i];
    }
  }

  // 4. mid: the same shape in and out, [N, Ck, h/2^k, w/2^k].
  if (mid_block) {
    auto* b = mid_block.get();
    h = checkpointing.run(*this, *b, [b](const std::vector<at::Tensor>& in) {
      return std::vector<at::Tensor>{b->forward(in[0], in[1], in[2])};
    }, {h, emb, context})[0];
  }
  if (residuals && residuals->mid.defined()) {
    if (residuals->mid.sizes() != h.sizes())
      fail(what, "mid-block residual has shape " + c10::str(residuals->mid.sizes()) + "; expected " +
                     c10::str(h.sizes()));
    h = h + residuals->mid;
  }

  // 5. up: each block takes its share of the skips (last in, first out) and, but for the last,
  // upsamples to the size of the skip below it; the last ends at [N, C0, h, w].
  for (size_t i = 0; i < up_blocks->size(); ++i) {
    auto* block = up_blocks[i]->as<blocks::UpBlock>();
    std::optional<std::vector<int64_t>> size;
    if (i + 1 < up_blocks->size()) {
      const auto& next = skips[skips.size() - block->size() - 1];
      size = std::vector<int64_t>{next.size(2), next.size(3)};
    }
    // The skip tensors the block consumes become inputs of its own.
    std::vector<at::Tensor> inputs{h, emb, context};
    inputs.insert(inputs.end(), skips.end() - static_cast<int64_t>(block->size()), skips.end());
    skips.resize(skips.size() - block->size());
    h = checkpointing.run(*this, *block, [block, size](const std::vector<at::Tensor>& in) {
      std::vector<at::Tensor> own(in.begin() + 3, in.end());
      return std::vector<at::Tensor>{block->forward(in[0], in[1], in[2], &own, size)};
    }, inputs)[0];
  }

  // 6. post-process
  h = blocks::activate(conv_norm_out(h), blocks::parse_activation(c.act_fn, "act_fn"), true);  // [N, C0, h, w]
  h = conv_out(h);  // [N, C_out, h, w]
  return channels_last ? h.contiguous() : h;
}

}  // namespace kosmosg::models
