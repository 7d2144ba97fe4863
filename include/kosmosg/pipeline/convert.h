#pragma once
// `kosmosg convert`: an official Kosmos-G fairseq checkpoint (stage 1, stage 2 or final) to a
// Kosmos-G model folder (see pipeline/kosmosg.h), in C++ with the restricted unpickler.
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

}  // namespace kosmosg::pipeline
