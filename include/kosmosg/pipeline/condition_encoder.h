#pragma once
// A condition encoder turns a prompt, with the images its "<i>" placeholders stand for, into what
// the UNet's cross-attention reads: the condition, and its unconditional twin (from the negative
// prompt) that classifier-free guidance steers away from. Stable Diffusion's CLIP text encoder
// (stable_diffusion.h) and Kosmos-G's MLLM + AlignerNet (kosmosg.h) are the two kinds; a Pipeline
// (pipeline.h) samples from either in the same way.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace kosmosg::pipeline {

struct Conditions {
  at::Tensor conditional;    // [1, L, D]
  at::Tensor unconditional;  // [1, L, D]; undefined when made without guidance

  // The UNet's condition rows: [unconditional; conditional] ([2, L, D]) with guidance, else the
  // conditional alone.
  at::Tensor batch() const;
};

class ConditionEncoder {
 public:
  virtual ~ConditionEncoder() = default;

  // The conditions of `prompt`, whose "<i>" placeholders take `images` (uint8 H×W×3 RGB) in
  // order; the unconditional twin, from `negative`, only when `guided`. A prompt the encoder
  // cannot take (images without image slots, too many tokens) is an error.
  virtual Conditions encode(const std::string& prompt, const std::vector<at::Tensor>& images,
                            const std::string& negative, bool guided) = 0;

  virtual void to(const c10::Device& device, c10::ScalarType dtype) = 0;
  // Stores the encoder's large repeated blocks in `dtype` (half precision) for float32 compute;
  // encoders without such blocks keep their weights.
  virtual void store_block_weights(c10::ScalarType /*dtype*/) {}

  // The CLIP text encoder a LoRA file's text-encoder layers adapt, or nullptr when the conditions
  // come from a model LoRA files do not know.
  virtual torch::nn::Module* text_encoder() { return nullptr; }

  // The model kind, for messages: "Stable Diffusion" or "Kosmos-G".
  virtual std::string kind() const = 0;
};

}  // namespace kosmosg::pipeline
