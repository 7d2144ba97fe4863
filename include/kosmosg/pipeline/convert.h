#pragma once
// `kosmosg convert`: an official Kosmos-G fairseq checkpoint (stage 1, stage 2 or final) to a
// Kosmos-G model folder (see pipeline/kosmosg.h), in C++ with the restricted unpickler.
#include <c10/core/ScalarType.h>

#include <optional>
#include <string>

namespace kosmosg::pipeline {

struct ConvertOptions {
  std::string checkpoint;                  // checkpoint_*.pt
  std::string out_dir;                     // created; must not exist or be empty; its parent must exist
  std::optional<std::string> sizes_file;   // module sizes the official code fixes (like the fixture's sizes.json)
  std::optional<std::string> sd15_dir;     // reuse unet/, vae/, scheduler/ of this SD1.5 folder
  std::optional<std::string> tokenizer_dir;  // sentencepiece.bpe.model + dict.txt (default: beside the checkpoint)
  bool float32 = false;                    // store float32 instead of the checkpoint's float16
};

struct ConvertReport {
  std::string stage;  // "final", "stage2" or "stage1"
  size_t kosmosg_tensors = 0, unet_tensors = 0, vae_tensors = 0;
};

// Writes the folder into a temporary sibling and renames it into place at the end, so a failure
// leaves nothing behind. Every part is built from its config and loaded strictly before writing.
ConvertReport convert_checkpoint(const ConvertOptions& options);

struct ExportReport {
  size_t files = 0, tensors = 0;
  uint64_t weight_bytes = 0;  // of the written safetensors files
};

// `kosmosg export`: copies a model folder (a trainer's output, a converted or diffusers folder) to
// `out_dir` for release: its weights files with every floating tensor cast to `dtype`, the rest as
// they are, without training state (checkpoints/, samples/, metrics.jsonl). Staged and renamed as
// convert_checkpoint.
ExportReport export_model(const std::string& model_dir, const std::string& out_dir, c10::ScalarType dtype);

}  // namespace kosmosg::pipeline
