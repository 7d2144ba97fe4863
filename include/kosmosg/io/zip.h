#pragma once
// A minimal read-only ZIP reader for PyTorch checkpoints: the file is memory-mapped and stored
// (uncompressed) entries are handed out as byte ranges of the mapping, without copying.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kosmosg::io {

// One central-directory entry, its offsets already checked against the file size.
struct ZipEntry {
  std::string name;
  uint16_t method = 0;         // 0 = stored; anything else is compressed
  uint64_t data_offset = 0;    // where the entry's bytes start in the file
  uint64_t compressed_size = 0;
  uint64_t size = 0;           // uncompressed size
  uint32_t crc32 = 0;          // of the uncompressed bytes, as the central directory states it
};

// Bytes of a stored entry inside the mapping; valid while any copy of the ZipReader (or the
// keep-alive handle) exists. The mapping is private and writable (copy-on-write), so tensors
// built over it may be modified without touching the file.
struct ZipBytes {
  uint8_t* data = nullptr;
  uint64_t size = 0;
};

// True when the file starts like a ZIP archive ("PK\3\4" or, for an empty one, "PK\5\6").
bool is_zip_file(const std::string& path);

// A ZIP archive (ZIP64 included) mapped read-only. Every offset in the end-of-central-directory
// records, the central directory and the local headers is validated on open; errors name the
// file and the entry.
class ZipReader {
 public:
  static ZipReader open(const std::string& path);

  const std::string& path() const;
  // Entry names in central-directory order.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  const ZipEntry& entry(const std::string& name) const;
  // The bytes of a stored entry, checked against its CRC-32 (as PyTorch's reader does); a
  // compressed or damaged entry is an error naming it.
  ZipBytes bytes(const std::string& name) const;
  // Keeps the mapping alive (e.g. inside a tensor's deleter) after the reader is gone.
  std::shared_ptr<const void> keep_alive() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;
};

}  // namespace kosmosg::io
