#include <spdlog/spdlog.h>

#include <memory>

#include "cli/commands.h"
#include "kosmosg/pipeline/convert.h"

namespace kosmosg::cli {

Command add_convert(CLI::App& app) {
  auto o = std::make_shared<pipeline::ConvertOptions>();
  auto sizes = std::make_shared<std::string>(), sd15 = std::make_shared<std::string>(),
       tokenizer = std::make_shared<std::string>();
  auto* sub = app.add_subcommand(
      "convert", "Convert an official Kosmos-G checkpoint (fairseq .pt: stage 1, stage 2 or final) to a model folder");
  sub->add_option("checkpoint", o->checkpoint, "The official checkpoint (checkpoint_final.pt, ...)")->required();
  sub->add_option("out_dir", o->out_dir, "The model folder to create (must not exist, or be empty)")->required();
  sub->add_option("--sizes", *sizes, "JSON with the module sizes the official code fixes (default: the official ones)");
  sub->add_option("--sd15", *sd15, "Reuse unet/, vae/ and scheduler/ of this Stable Diffusion 1.5 folder "
                                   "(required when the checkpoint holds no UNet)");
  sub->add_option("--tokenizer", *tokenizer, "Folder with sentencepiece.bpe.model and dict.txt (default: beside the checkpoint)");
  sub->add_flag("--float32", o->float32, "Store float32 weights instead of the checkpoint's float16");
  return {sub, [o, sizes, sd15, tokenizer] {
            if (!sizes->empty()) o->sizes_file = *sizes;
            if (!sd15->empty()) o->sd15_dir = *sd15;
            if (!tokenizer->empty()) o->tokenizer_dir = *tokenizer;
            const auto report = pipeline::convert_checkpoint(*o);
            spdlog::info("converted {} ({} checkpoint): {} Kosmos-G tensors, {} UNet, {} VAE -> {}", o->checkpoint,
                         report.stage, report.kosmosg_tensors, report.unet_tensors, report.vae_tensors, o->out_dir);
            return 0;
          }};
}

}  // namespace kosmosg::cli
