#pragma once
// Training checkpoints: OUT/checkpoints/step_<N>/ holds trainable.safetensors (official names),
// optimizer.safetensors and state.json; OUT/checkpoints/latest names the newest complete one and is
// written last. A checkpoint is assembled in a staging folder and renamed into place, so a run
// killed while saving leaves the previous checkpoint loadable.
#include <optional>
#include <string>

#include "kosmosg/io/config.h"
#include "kosmosg/io/safetensors.h"

namespace kosmosg::train {

struct Checkpoint {
  std::string dir;
  io::TensorMap trainable, optimizer;
  io::Json state;
};

class CheckpointManager {
 public:
  // Checkpoints live in `out_dir`/checkpoints; only the newest `keep_last` (≥ 1) are kept.
  CheckpointManager(std::string out_dir, int64_t keep_last);

  // Writes the checkpoint of update `step`, then the latest pointer, then prunes; returns its folder.
  std::string save(int64_t step, const io::TensorMap& trainable, const io::TensorMap& optimizer,
                   const io::Json& state) const;
  // The checkpoint `latest` names; nullopt when there is none. A pointer to a missing or
  // incomplete folder is an error naming it.
  std::optional<Checkpoint> load_latest() const;

  const std::string& folder() const { return folder_; }

 private:
  std::string folder_;
  int64_t keep_last_;
};

}  // namespace kosmosg::train
