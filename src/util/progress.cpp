#include "kosmosg/util/progress.h"

#include <unistd.h>

namespace kosmosg {

Progress::Progress(std::string label, int64_t total, bool quiet)
    : label_(std::move(label)), total_(total), quiet_(quiet), tty_(isatty(fileno(stderr)) != 0) {
  start_ = std::chrono::steady_clock::now();
  if (!quiet_ && tty_) print();
}

Progress::~Progress() {
  if (!quiet_ && tty_ && done_ > 0) std::fputc('\n', stderr);
}

void Progress::tick() {
  ++done_;
  if (!quiet_) print();
}

void Progress::print() {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double per_step = done_ > 0 ? elapsed / static_cast<double>(done_) : 0.0;
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * done_ / total_) : 0;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(stderr, "\r%s [%s] %lld/%lld  %.2f s/it  %.1f s", label_.c_str(), bar.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), per_step, elapsed);
  } else if (done_ > 0) {
    std::fprintf(stderr, "%s %lld/%lld  %.2f s/it  %.1f s\n", label_.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), per_step, elapsed);
  }
  std::fflush(stderr);
}

}  // namespace kosmosg
