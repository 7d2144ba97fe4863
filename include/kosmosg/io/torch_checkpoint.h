#pragma once
// PyTorch checkpoints in torch.save's zip format, read without executing anything, and the
// fairseq training checkpoints stored in them (the official Kosmos-G release format).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "kosmosg/io/pickle.h"
#include "kosmosg/io/safetensors.h"

namespace kosmosg::io {

// Unpickles `<archive>/data.pkl` of a torch.save zip file with the restricted unpickler; tensors
// are views of the memory-mapped `<archive>/data/<key>` storages (shared where the pickle shares
// them). The legacy non-zip torch.save format, big-endian files and compressed entries are Errors.
PickleValue load_torch_checkpoint(const std::string& path);

// The parts of a fairseq checkpoint a converter needs.
struct FairseqCheckpoint {
  TensorMap model;          // state["model"]: parameter name → tensor, mmap-backed (no copy)
  nlohmann::json cfg;       // state["cfg"] (an omegaconf DictConfig) as plain JSON; null if absent
  int64_t num_updates = 0;  // optimizer_history[-1]["num_updates"]; 0 when absent
  PickleValue state;        // the whole top-level dict, for anything else
};

// Reads a fairseq checkpoint; a file without a 'model' state dict is an Error.
FairseqCheckpoint read_fairseq_checkpoint(const std::string& path);
// The same from a top-level dict already loaded by load_torch_checkpoint; `path` names it in errors.
FairseqCheckpoint read_fairseq_checkpoint(PickleValue state, const std::string& path);

// Converts plain data (None, bool, int, float, str, list, tuple, dict) and omegaconf DictConfig /
// ListConfig / AnyNode trees into JSON, unwrapping each node to its value. Whole-string
// interpolations "${a.b}" are left as written. Tensors, bytes and other objects are an Error
// naming `what` and the path inside it.
nlohmann::json pickle_to_json(const PickleValue& value, const std::string& what);

}  // namespace kosmosg::io
