#include "kosmosg/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kosmosg/error.h"

namespace kosmosg::train {
namespace {

namespace fs = std::filesystem;

const char* const kPrefix = "step_";

// A rename is durable only once the folder holding the entry is synced.
void sync_folder(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

std::string step_name(int64_t step) {
  std::ostringstream s;
  s << kPrefix;
  s.width(8);
  s.fill('0');
  s << step;
  return s.str();
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail("checkpoint", "cannot read " + path.string());
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

CheckpointManager::CheckpointManager(std::string out_dir, int64_t keep_last)
    : folder_((fs::path(out_dir) / "checkpoints").string()), keep_last_(keep_last) {
  if (keep_last < 1) fail("checkpoint", "keep_last is " + std::to_string(keep_last) + ", expected at least 1");
}

std::string CheckpointManager::save(int64_t step, const io::TensorMap& trainable, const io::TensorMap& optimizer,
                                    const io::Json& state) const {
  const fs::path root(folder_);
  fs::create_directories(root);
  const std::string name = step_name(step);
  const fs::path staging = root / (name + ".partial-" + std::to_string(::getpid()));
  const fs::path final_dir = root / name;
  fs::remove_all(staging);
  fs::create_directories(staging);
  io::save_safetensors((staging / "trainable.safetensors").string(), trainable, {{"format", "pt"}});
  io::save_safetensors((staging / "optimizer.safetensors").string(), optimizer);
  io::write_text_atomically((staging / "state.json").string(), state.dump(2) + "\n");
  sync_folder(staging);
  if (fs::exists(final_dir)) fs::remove_all(final_dir);  // the same step saved again (a resumed run)
  fs::rename(staging, final_dir);
  sync_folder(root);
  io::write_text_atomically((root / "latest").string(), name + "\n");

  std::vector<std::string> steps;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind(kPrefix, 0) == 0 && n.find('.') == std::string::npos) steps.push_back(n);
    // Staging folders of runs killed while saving.
    if (e.is_directory() && n.find(".partial-") != std::string::npos && e.path() != staging) fs::remove_all(e.path());
  }
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + static_cast<size_t>(keep_last_) < steps.size(); ++i)
    if (steps[i] != name) fs::remove_all(root / steps[i]);
  return final_dir.string();
}

std::optional<Checkpoint> CheckpointManager::load_latest() const {
  const fs::path root(folder_);
  const fs::path pointer = root / "latest";
  if (!fs::exists(pointer)) return std::nullopt;
  std::string name = read_text(pointer);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (name.rfind(kPrefix, 0) != 0 || name.find('/') != std::string::npos)
    fail("checkpoint", pointer.string() + " holds '" + name + "', expected a step_<N> folder name");
  const fs::path dir = root / name;
  for (const char* file : {"trainable.safetensors", "optimizer.safetensors", "state.json"})
    if (!fs::exists(dir / file))
      fail("checkpoint", (dir / file).string() + " is missing: " + pointer.string() + " names an incomplete checkpoint");
  Checkpoint c;
  c.dir = dir.string();
  c.trainable = io::SafeTensors::open((dir / "trainable.safetensors").string()).tensors();
  c.optimizer = io::SafeTensors::open((dir / "optimizer.safetensors").string()).tensors();
  c.state = io::read_json((dir / "state.json").string());
  return c;
}

}  // namespace kosmosg::train
