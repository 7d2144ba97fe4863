#pragma once
// Safetensors files: a validating, memory-mapped reader and an atomic writer.
#include <ATen/core/Tensor.h>

#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kosmosg::io {

// Named tensors in a stable (sorted) order; the currency of weight loading.
using TensorMap = std::map<std::string, at::Tensor>;

// Shape and dtype of one entry, as its header declares it.
struct TensorInfo {
  std::string dtype;  // safetensors spelling: F32, F16, BF16, ...
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte range inside the data section
};

// A safetensors file mapped read-only (copy-on-write). Every header field is checked on open;
// tensors are views of the mapping (no copy) whenever the dtype and alignment allow, and keep
// the mapping alive for as long as they exist.
class SafeTensors {
 public:
  static SafeTensors open(const std::string& path);

  const std::string& path() const;
  std::vector<std::string> keys() const;  // sorted by name
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  at::Tensor get(const std::string& name) const;
  // Every tensor whose name starts with `prefix`, with the prefix removed.
  TensorMap tensors(const std::string& prefix = "") const;
  const std::map<std::string, std::string>& metadata() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

// Writes `tensors` (any device, any layout; converted to contiguous CPU) with `metadata` to
// `path` atomically: a temporary file in the same folder, fsync, then rename.
void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Creates `path` atomically: `write` fills a temporary file in the same folder, which is then
// fsynced and renamed over `path`. On any error the temporary file is removed, so a failure never
// leaves a partial file behind nor touches an existing one. The one place files are written.
void write_file_atomically(const std::string& path,
                           const std::function<void(std::FILE*)>& write);

// Writes `text` to `path` atomically (write_file_atomically).
void write_text_atomically(const std::string& path, const std::string& text);

// Makes `to` a hard link of `from` (no copy of gigabytes of weights), or a copy where the file
// system cannot link; an existing `to` is replaced.
void link_or_copy(const std::string& from, const std::string& to);

}  // namespace kosmosg::io
