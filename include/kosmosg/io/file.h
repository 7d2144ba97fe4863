#pragma once
// Opening input files safely. Only regular files are read: a FIFO would block forever and a
// device such as /dev/zero would never end. Files are opened without blocking and checked
// after opening (no window for a swap), and their size is bounded before a byte is read.
#include <cstdint>
#include <string>

namespace kosmosg::io {

// Opens the regular file `path` read-only and returns its descriptor (the caller closes it) and
// size. A missing file, a folder, a device or a FIFO is an Error "[op] path: ..." saying which.
int open_regular_file(const std::string& path, const std::string& op, uint64_t& size);

// Fails as open_regular_file does unless `path` is a readable regular file.
void require_regular_file(const std::string& path, const std::string& op);

// The whole content of the regular file `path`; a file larger than `max_bytes` is an Error
// naming the file and the limit.
std::string read_file(const std::string& path, const std::string& op, uint64_t max_bytes);

}  // namespace kosmosg::io
