#include <ATen/ATen.h>

#include "kosmosg/data/sample.h"
#include "kosmosg/error.h"

namespace kosmosg::data {

const char* stage_name(StageKind stage) {
  switch (stage) {
    case StageKind::LM:
      return "lm";
    case StageKind::Align:
      return "align";
    case StageKind::Instruct:
      return "instruct";
    case StageKind::Vae:
      return "vae";
    case StageKind::T2I:
      return "t2i";
  }
  return "?";
}

StageKind parse_stage(const std::string& name) {
  if (name == "lm") return StageKind::LM;
  if (name == "align") return StageKind::Align;
  if (name == "instruct") return StageKind::Instruct;
  if (name == "vae") return StageKind::Vae;
  if (name == "t2i") return StageKind::T2I;
  fail("stage", "unknown stage '" + name + "' (expected lm, align, instruct, vae or t2i)");
}

bool is_kosmosg_stage(StageKind stage) { return stage != StageKind::Vae && stage != StageKind::T2I; }

Batch collate(const std::vector<Sample>& samples, const std::string& source) {
  if (samples.empty()) fail("collate", "no samples given for source '" + source + "', expected at least one");
  std::vector<text::TrainingSequence> sequences;
  std::vector<at::Tensor> images, targets;
  Batch batch;
  for (const auto& s : samples) {
    sequences.push_back(s.sequence);
    images.insert(images.end(), s.images.begin(), s.images.end());
    if (s.target.defined()) targets.push_back(s.target);
    batch.captions.push_back(s.caption);
    batch.negatives.push_back(s.negative);
    batch.sample_seeds.push_back(s.seed);
    batch.ntokens += static_cast<int64_t>(s.sequence.doc.size());
  }
  if (batch.ntokens > 0) {
    auto text = text::collate_training(sequences);
    batch.src_tokens = text.src;
    batch.target = text.target;
    batch.img_gpt_input_mask = text.input_mask;
    batch.gpt_loss_mask = text.loss_mask;
  }
  if (!images.empty()) batch.images = at::stack(images);
  if (targets.size() == samples.size()) batch.target_images = at::stack(targets);
  batch.nsentences = static_cast<int64_t>(samples.size());
  batch.source = source;
  return batch;
}

}  // namespace kosmosg::data
