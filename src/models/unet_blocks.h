#pragma once
// What the UNet, the ControlNet and the VAE share besides the public blocks: activations, the
// timestep features, and the UNet's blocks made from its config. Internal to the library.
#include <ATen/core/Tensor.h>

#include <string>

#include "kosmosg/models/unet.h"
#include "kosmosg/models/unet_blocks.h"

namespace kosmosg::models::blocks {

// Parses an activation name; an unknown one is an error naming `what` (the config key).
Activation parse_activation(const std::string& name, const std::string& what);

// Applies `act`; in place when autograd is off and `x` may be overwritten (`x_is_temporary`).
at::Tensor activate(const at::Tensor& x, Activation act, bool x_is_temporary = false);

// Sinusoidal timestep features [N, dim] in float32 (diffusers `get_timestep_embedding`):
// frequencies exp(-ln(10000)·j/(dim/2 − shift)), [sin, cos] or [cos, sin] when `flip_sin_to_cos`.
at::Tensor timestep_sinusoids(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double freq_shift);

// The parts of a UNet2DConditionModel as its config defines them, shared with ControlNetModel
// (which copies the UNet's conv_in, time embedding, down blocks and mid block).
int64_t unet_time_embed_dim(const UNet2DConditionConfig& config);
TimestepEmbedding make_unet_time_embedding(const UNet2DConditionConfig& config);
DownBlock make_unet_down_block(const UNet2DConditionConfig& config, size_t index);
MidBlock make_unet_mid_block(const UNet2DConditionConfig& config);
UpBlock make_unet_up_block(const UNet2DConditionConfig& config, size_t index);

}  // namespace kosmosg::models::blocks
