#pragma once
// `kosmosg train`: one stage from a model folder and data sources to an output folder that is
// itself a model folder (generate and the next stage load it), with checkpoints, exact resume,
// a progress line and a JSONL metrics file.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kosmosg/data/sample.h"
#include "kosmosg/io/config.h"
#include "kosmosg/train/distributed.h"
#include "kosmosg/train/stage.h"
#include "kosmosg/train/trainer.h"

namespace kosmosg::train {

struct RunOptions {
  data::StageKind stage = data::StageKind::Instruct;
  std::string model_dir;              // the starting model folder
  std::string init_from;              // optional: kosmosg/ weights from a previous stage's output
  std::string out_dir;
  std::vector<std::string> data;      // source specs, [KIND:]PATH[:WEIGHT]
  int64_t steps = 0;                  // updates to reach in this run (0: max_update)
  int64_t max_update = 0;
  int64_t batch_size = 1;
  int64_t update_freq = 1;
  int64_t save_every = 0;             // 0: only at the end
  int64_t keep_last = 3;
  int64_t log_every = 1;
  int64_t workers = 0;
  double max_failure_fraction = 0.1;
  uint64_t seed = 0;
  bool resume = false;
  bool quiet = false;
  std::string device = "cpu";
  // float32, bfloat16 (autocast), float16 (CUDA, loss scaling) or memory-efficient-bf16/-fp16
  // (every weight in half precision; see PrecisionPolicy).
  std::string precision = "float32";
  OptimizationOptions optimization;
  StageOptions stage_options;
  // Every `sample_every` updates (0: never) the output's weights files are brought up to date and
  // `on_sample(update)` runs (the CLI writes sample images from the folder).
  int64_t sample_every = 0;
  std::function<void(int64_t update)> on_sample;
  // Data parallelism: a process group is formed when the launch has more than one rank or a
  // backend is named. Rank r reads the r-th share of the data; rank 0 alone writes the output
  // (which must be on a file system every rank reads, for --resume).
  LaunchInfo launch;
  DistributedOptions distributed;

  // The training config layout of configs/train/*.json; keys absent keep the current values.
  void apply_config(const io::Json& config, const std::string& what);
};

// What a finished run reports.
struct RunSummary {
  int64_t first_update = 0, last_update = 0;  // updates done before and after this run
  double last_loss = 0;
  int64_t samples_read = 0, samples_failed = 0, samples_filtered = 0;  // summed over the ranks
};

// Runs the stage; throws kosmosg::Error on bad input. Everything already written stays valid.
RunSummary run_training(const RunOptions& options);

}  // namespace kosmosg::train
