#pragma once
// Token sequences the Kosmos-G model consumes: the inference prompt layout with image slots
// (reference §4.2) and the training sequences of §4.3, plus their batching.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kosmosg/text/kosmosg_tokenizer.h"

namespace kosmosg::text {

// The placeholder that stands for the next image in a prompt.
inline constexpr const char* kImagePlaceholder = "<i>";
// Image slots per image in the official task (the connector's latent_query_num).
inline constexpr size_t kImageTokenLength = 64;

// One prompt's tokens; image_mask is 1 on the slots that the image features overwrite.
struct PromptLayout {
  std::vector<int64_t> tokens;
  std::vector<uint8_t> image_mask;
  size_t num_images = 0;
};

// `<s>`, then for each `<i>`: the text before it, `<image>` × (image_token_length + 1) and
// `</image>` (mask 1 on all but the first `<image>`), then the trailing text; no `</s>`.
PromptLayout layout_prompt(const KosmosGTokenizer& tokenizer, const std::string& prompt,
                           size_t image_token_length = kImageTokenLength);

// `[<s>] + tokens(negative_prompt)`, no `</s>`; an empty prompt gives the null input `[<s>]`.
std::vector<int64_t> negative_tokens(const KosmosGTokenizer& tokenizer, const std::string& negative_prompt);

// Right-padded prompts: tokens [B, T] int64 (pad id 1), image_mask [B, T] uint8 (pad 0).
struct PromptBatch {
  at::Tensor tokens;
  at::Tensor image_mask;
  size_t num_images = 0;  // over all rows
};

// Stacks layouts, padding each on the right to the longest one.
PromptBatch batch_prompts(const std::vector<PromptLayout>& layouts);

// A whole training document with its masks (same length): input_mask marks image slots,
// loss_mask the positions whose next token is scored.
struct TrainingSequence {
  std::vector<int64_t> doc;
  std::vector<uint8_t> input_mask;
  std::vector<uint8_t> loss_mask;
};

// LAION caption: `[<s>] + caption + [</s>]`, no image slots, loss mask `[0, 1, …, 1]`.
TrainingSequence laion_sequence(const KosmosGTokenizer& tokenizer, const std::string& caption);

// InstructPix2Pix: `<s> caption <image>×(L+1) </image> edit </s>` with the input image's slots
// masked in; loss mask 0 on the image span except `</image>`. Pass an empty caption to drop it.
TrainingSequence instruct_pix2pix_sequence(const KosmosGTokenizer& tokenizer, const std::string& input_caption,
                                           const std::string& edit, size_t image_token_length = kImageTokenLength);

// The texts around a prompt's `<i>` placeholders, like Python's prompt.split("<i>"): n
// placeholders give n + 1 texts, empty ones included.
std::vector<std::string> split_prompt(const std::string& prompt);

// Interleaved text and images (the OpenImages layout): `<s>`, then for each image the text before
// it, `<image>` × (L+1) and `</image>`, then the last text and `</s>`. `texts` holds one text per
// image plus the trailing one (see split_prompt). Input mask 1 on the L slots after each first
// `<image>`; loss mask 0 on the L+1 `<image>` ids, 1 elsewhere (`<s>` included).
TrainingSequence interleaved_sequence(const KosmosGTokenizer& tokenizer, const std::vector<std::string>& texts,
                                      size_t image_token_length = kImageTokenLength);

// A training batch: src = doc[:-1], target = doc[1:], masks [:-1] (aligned with src), all
// [B, T]; right padding 1 for src and target, 0 for input_mask, 1 for loss_mask.
struct TrainingBatch {
  at::Tensor src;
  at::Tensor target;
  at::Tensor input_mask;
  at::Tensor loss_mask;
};

// Collates documents of at least two tokens each.
TrainingBatch collate_training(const std::vector<TrainingSequence>& sequences);

}  // namespace kosmosg::text
