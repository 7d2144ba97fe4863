#pragma once
// A collated training batch as the official loaders' collate produces it (reference §4.3).
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace kosmosg::data {

// The training stage a batch is prepared for (decides fields and filters).
enum class StageKind { LM, Align, Instruct };

// src_tokens/target [B, T] int64 (pad 1), img_gpt_input_mask / gpt_loss_mask [B, T] uint8,
// images [N, 3, S, S] (every sample's MLLM images in order; undefined when none), target_images
// [B, 3, H, W] in [-1, 1] (undefined unless every sample has one), the plain captions, and the
// fairseq counts: nsentences = B, ntokens = Σ document lengths.
struct Batch {
  at::Tensor src_tokens, target, img_gpt_input_mask, gpt_loss_mask, images, target_images;
  std::vector<std::string> captions;
  int64_t nsentences = 0, ntokens = 0;
  std::string source;
};

}  // namespace kosmosg::data
