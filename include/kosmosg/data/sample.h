#pragma once
// One training example as a data source prepares it, and the batch the trainer consumes
// (reference §4.3: documents with input and loss masks, MLLM images, diffusion targets).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kosmosg/text/clip_tokenizer.h"
#include "kosmosg/text/kosmosg_tokenizer.h"
#include "kosmosg/text/prompt_layout.h"

namespace kosmosg::data {

// What a sample must be prepared for: decides which fields are filled and which filters apply.
// LM: documents and MLLM images; Align: captions only (no image is decoded); Instruct: also the
// diffusion target, which every sample must then have. The decoder's own stages need no
// Kosmos-G tokenizer: Vae only the target image; T2I the target image and its caption.
enum class StageKind { LM, Align, Instruct, Vae, T2I };

// The stage's name as the command line spells it ("lm", "align", "instruct", "vae", "t2i").
const char* stage_name(StageKind stage);
// The stage named "lm", "align", "instruct", "vae" or "t2i"; an Error names anything else.
StageKind parse_stage(const std::string& name);
// Whether the stage trains Kosmos-G's conditioning side (lm, align, instruct), whose samples are
// MLLM token sequences, rather than the diffusion decoder itself (vae, t2i).
bool is_kosmosg_stage(StageKind stage);

struct SampleOptions {
  StageKind stage = StageKind::Instruct;
  const text::KosmosGTokenizer* tokenizer = nullptr;    // required by the Kosmos-G stages
  const text::CLIPTokenizer* clip_tokenizer = nullptr;  // optional; align filter (> 75 CLIP BPE tokens skipped)
  int64_t image_token_length = 64;                      // slots per image
  int64_t image_size = 224;                             // MLLM image side (io::clip_pixel_values)
  int64_t target_size = 512;                            // diffusion target side (io::vae_pixel_values): Instruct, Vae, T2I
};

// One prepared training example before collation.
struct Sample {
  text::TrainingSequence sequence;  // doc, input_mask, loss_mask
  std::vector<at::Tensor> images;   // MLLM images [3,S,S] float (CLIP-normalised), in slot order
  at::Tensor target;                // [3,H,W] float in [-1,1]; undefined unless stage Instruct, Vae or T2I
  std::string caption;              // caption of the target / the text (align teacher input); may be empty
  std::string negative;             // t2i: a caption the target is not (a hard negative); empty: none
  uint64_t seed = 0;                // the sample's own seed (the loader's, from its source, epoch and index)
};

// A collated batch: src_tokens, target, img_gpt_input_mask (uint8), gpt_loss_mask (uint8), all [B,T]
// as text::collate_training (undefined when the samples have no token sequence: stages vae, t2i); images [N,3,S,S] (all samples' images in order; undefined when none);
// target_images [B,3,H,W] (undefined unless every sample has one); nsentences = B; ntokens = sum of
// the documents' lengths; source = the source's name; sample_seeds = each row's Sample::seed, from
// which the trainer draws that row's noise, so that the draws do not depend on how samples are
// split over ranks and micro-batches.
struct Batch {
  at::Tensor src_tokens, target, img_gpt_input_mask, gpt_loss_mask, images, target_images;
  std::vector<std::string> captions;
  std::vector<std::string> negatives;  // each row's Sample::negative
  std::vector<uint64_t> sample_seeds;
  int64_t nsentences = 0, ntokens = 0;
  std::string source;
};

Batch collate(const std::vector<Sample>& samples, const std::string& source);

}  // namespace kosmosg::data
