#pragma once
// One progress printer: a bar with s/it on a terminal, plain lines otherwise (logs, pipes).
#include <chrono>
#include <cstdio>
#include <string>

namespace kosmosg {

class Progress {
 public:
  // `label` names the work, `total` counts its steps; prints to stderr unless `quiet`.
  Progress(std::string label, int64_t total, bool quiet = false);
  ~Progress();
  // Marks one more step done.
  void tick();

 private:
  void print();

  std::string label_;
  int64_t total_, done_ = 0;
  bool quiet_, tty_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace kosmosg
