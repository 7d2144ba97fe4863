#include "kosmosg/nn/lora.h"

#include <torch/torch.h>

#include "kosmosg/error.h"
#include "nn/onednn.h"
#include "nn/winograd.h"

namespace kosmosg::nn {

double LoraUpdate::factor() const {
  return alpha > 0 ? alpha / static_cast<double>(down.size(0)) : 1.0;
}

void LoraLayer::check_lora(const LoraUpdate& update, const std::string& name) {
  const at::Tensor& w = lora_weight();
  if (!update.down.defined() || !update.up.defined())
    fail("lora", name + ": needs both a down and an up weight");
  const auto& down = update.down;
  const auto& up = update.up;
  // Linear [out, in] takes [r, in] + [out, r]; Conv2d [out, in, kh, kw] takes [r, in, kh, kw] +
  // [out, r, 1, 1].
  const bool conv = w.dim() == 4;
  bool fits = down.dim() == w.dim() && up.dim() == w.dim() && down.size(0) == up.size(1) &&
              down.size(0) > 0 && down.size(1) == w.size(1) && up.size(0) == w.size(0);
  if (fits && conv)
    fits = down.size(2) == w.size(2) && down.size(3) == w.size(3) && up.size(2) == 1 &&
           up.size(3) == 1;
  if (!fits)
    fail("lora", name + ": lora_down " + c10::str(down.sizes()) + " and lora_up " + c10::str(up.sizes()) +
                     " do not fit a layer with weight " + c10::str(w.sizes()) + " (expected [rank, " +
                     std::to_string(w.size(1)) + (conv ? ", kh, kw" : "") + "] and [" +
                     std::to_string(w.size(0)) + ", rank" + (conv ? ", 1, 1" : "") + "])");
}

void LoraLayer::add_lora(LoraUpdate update, const std::string& name) {
  check_lora(update, name);
  if (!update.strength) fail("lora", name + ": no strength given");
  const at::Tensor& w = lora_weight();
  update.down = update.down.to(w.options()).contiguous();
  update.up = update.up.to(w.options()).contiguous();
  lora_.push_back(std::move(update));
}

void LoraLayer::merge_lora() {
  torch::NoGradGuard no_grad;
  at::Tensor& w = lora_weight();
  for_each_active([&](const LoraUpdate& u, double scale) {
    // The product in float32 at least, so that a half-precision model loses nothing extra.
    const auto wide = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    auto delta = at::matmul(u.up.flatten(1).to(wide), u.down.flatten(1).to(wide)).view(w.sizes());
    w.copy_((w.to(wide) + delta * scale).to(w.scalar_type()));
  });
  lora_.clear();
}

at::Tensor LoRACompatibleLinearImpl::forward(const at::Tensor& x) {
  auto y = LinearImpl::forward(x);
  for_each_active([&](const LoraUpdate& u, double scale) {
    y = y.add(nn::linear(nn::linear(x, u.down), u.up), scale);
  });
  return y;
}

at::Tensor LoRACompatibleConvImpl::forward(const at::Tensor& x) {
  at::Tensor y;
  if (winograd::pays_for(x, weight, bias, options)) {
    y = winograd::conv2d(x, weight, bias);
  } else if (packs_for(x)) {
    if (!weight.is_mkldnn()) replace_weight(onednn::pack_conv_weight(weight, options, x.sizes()));
    y = onednn::conv2d_packed(x, weight, bias, options);
  } else {
    unpack_weight();
    y = torch::nn::Conv2dImpl::forward(x);
  }
  for_each_active([&](const LoraUpdate& u, double scale) {
    // The down projection is a convolution with the layer's own geometry, the up one is 1×1.
    const auto& o = options;
    auto h = torch::nn::functional::conv2d(
        x, u.down,
        torch::nn::functional::Conv2dFuncOptions().stride(o.stride()).padding(o.padding()).dilation(
            o.dilation()));
    y = y.add(at::conv2d(h, u.up), scale);
  });
  return y;
}

at::Tensor LoRACompatibleConvImpl::forward_tokens(const at::Tensor& tokens) {
  if (weight.size(2) != 1 || weight.size(3) != 1)
    fail("lora", "forward_tokens needs a 1x1 convolution; this one has weight " + c10::str(weight.sizes()));
  unpack_weight();
  auto y = nn::linear(tokens, weight.flatten(1), bias);
  for_each_active([&](const LoraUpdate& u, double scale) {
    y = y.add(nn::linear(nn::linear(tokens, u.down.flatten(1)), u.up.flatten(1)), scale);
  });
  return y;
}

void LoRACompatibleConvImpl::set_weight_packing(bool on) {
  packing_ = on;
  if (!on) unpack_weight();
}

at::Tensor& LoRACompatibleConvImpl::lora_weight() {
  unpack_weight();
  return weight;
}

bool LoRACompatibleConvImpl::packs_for(const at::Tensor& x) const {
  if (!packing_ || x.dim() != 4 || !onednn::can_pack_conv(options) || !onednn::fits(x, weight, bias))
    return false;
  // Unpacked, at::conv2d reorders the weight on every call: that costs more than the
  // convolution itself where the weight is the larger tensor.
  return weight.is_mkldnn() || weight.numel() >= 2 * x.numel();
}

void LoRACompatibleConvImpl::replace_weight(at::Tensor w) {
  w.set_requires_grad(weight.requires_grad());
  parameters_["weight"] = w;
  weight = std::move(w);
}

void LoRACompatibleConvImpl::unpack_weight() {
  if (!weight.is_mkldnn()) return;
  torch::NoGradGuard no_grad;
  replace_weight(weight.to_dense());
}

void set_weight_packing(torch::nn::Module& module, bool on) {
  for (const auto& m : module.modules())
    if (auto* conv = dynamic_cast<LoRACompatibleConvImpl*>(m.get())) conv->set_weight_packing(on);
}

}  // namespace kosmosg::nn
