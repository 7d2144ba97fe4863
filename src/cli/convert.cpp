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
          },
          {{"sizes file", "--sizes"}, {"sd15 folder", "--sd15"}, {"tokenizer folder", "--tokenizer"}}};
}

Command add_export(CLI::App& app) {
  auto model = std::make_shared<std::string>(), out = std::make_shared<std::string>(),
       dtype = std::make_shared<std::string>("float16");
  auto* sub = app.add_subcommand(
      "export", "Copy a model folder for release: its weights in half precision (or --dtype), without training "
                "state (checkpoints/, samples/, metrics.jsonl); generation computes in float32 on the CPU as before");
  sub->add_option("model_dir", *model, "The model folder (a train --out, convert output or diffusers folder)")->required();
  sub->add_option("out_dir", *out, "The folder to create (must not exist, or be empty)")->required();
  sub->add_option("--dtype", *dtype, "Storage type of the floating weights")
      ->check(CLI::IsMember({"float16", "bfloat16", "float32"}))
      ->capture_default_str();
  return {sub, [model, out, dtype] {
            const auto type = *dtype == "float16" ? at::kHalf : *dtype == "bfloat16" ? at::kBFloat16 : at::kFloat;
            const auto report = pipeline::export_model(*model, *out, type);
            spdlog::info("exported {} -> {}: {} files, {} tensors as {}, {:.1f} MB of weights", *model, *out,
                         report.files, report.tensors, *dtype, static_cast<double>(report.weight_bytes) / 1e6);
            return 0;
          }};
}

}  // namespace kosmosg::cli
