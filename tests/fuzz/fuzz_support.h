#pragma once
// What the fuzz harnesses share: inputs that a reader takes as a file are written to a scratch
// folder of this process, and fixed data (tokenizer files) is read from the source tree.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace kosmosg::fuzz {

// This process's scratch folder under the temporary directory, removed when the fuzzer exits
// normally (a crash leaves it for inspection).
inline const std::filesystem::path& scratch_dir() {
  struct Scratch {
    std::filesystem::path path;
    Scratch() {
      path = std::filesystem::temp_directory_path() / ("kosmosg_fuzz_" + std::to_string(::getpid()));
      std::filesystem::create_directories(path);
    }
    ~Scratch() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  };
  static const Scratch scratch;
  return scratch.path;
}

// Writes `size` bytes to `relative` inside the scratch folder (creating its folders) and returns
// the file's path.
inline std::string write_file(const std::string& relative, const void* data, size_t size) {
  const std::filesystem::path path = scratch_dir() / relative;
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.flush()) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", path.c_str());
    std::abort();
  }
  return path.string();
}

inline std::string write_file(const std::string& relative, const std::string& text) {
  return write_file(relative, text.data(), text.size());
}

// A file of the source tree (KOSMOSG_SOURCE_DIR comes from tests/fuzz/CMakeLists.txt).
inline std::string source_file(const std::string& relative) { return std::string(KOSMOSG_SOURCE_DIR) + "/" + relative; }

// Stops the fuzzer with `what` when a reader broke one of its promises without an exception:
// libFuzzer records the input as a crash.
inline void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz: broken promise: %s\n", what);
    std::abort();
  }
}

}  // namespace kosmosg::fuzz
