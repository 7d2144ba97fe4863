#include "kosmosg/io/zip.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <zlib.h>

#include "kosmosg/error.h"
#include "kosmosg/io/file.h"

namespace kosmosg::io {
namespace {

constexpr const char* kZipOp = "zip";
constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint64_t kEndSize = 22, kZip64EndSize = 56, kZip64LocatorSize = 20;
constexpr uint64_t kCentralHeaderSize = 46, kLocalHeaderSize = 30;
constexpr uint64_t kMaxCommentSize = 0xffff;

uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t* p) { return rd16(p) | (static_cast<uint32_t>(rd16(p + 2)) << 16); }
uint64_t rd64(const uint8_t* p) { return rd32(p) | (static_cast<uint64_t>(rd32(p + 4)) << 32); }

// True when [offset, offset + length) lies inside [0, limit), without overflow.
bool fits(uint64_t offset, uint64_t length, uint64_t limit) {
  return offset <= limit && length <= limit - offset;
}

}  // namespace

struct ZipReader::Impl {
  std::string path;
  void* map = nullptr;
  uint64_t size = 0;
  std::vector<ZipEntry> entries;
  std::map<std::string, size_t> by_name;

  const uint8_t* bytes() const { return static_cast<const uint8_t*>(map); }

  ~Impl() {
    if (map) munmap(map, size);
  }
};

bool is_zip_file(const std::string& path) {
  // Without blocking: a FIFO must not stall the check (it is then refused as no regular file).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat st {};
  unsigned char magic[4] = {};
  const bool read = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ::read(fd, magic, 4) == 4;
  ::close(fd);
  return read && magic[0] == 'P' && magic[1] == 'K' &&
         ((magic[2] == 3 && magic[3] == 4) || (magic[2] == 5 && magic[3] == 6));
}

ZipReader ZipReader::open(const std::string& path) {
  auto where = [&](const std::string& what) { fail(kZipOp, path + ": " + what); };
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  const int fd = open_regular_file(path, kZipOp, impl->size);
  if (impl->size < kEndSize) {
    ::close(fd);
    where("file is " + std::to_string(impl->size) +
          " bytes, too short for a ZIP end-of-central-directory record (not a ZIP archive)");
  }
  // Private and writable (copy-on-write) so that tensors over it are ordinary writable tensors;
  // MAP_NORESERVE because those pages are never meant to be written in practice.
  impl->map = mmap(nullptr, impl->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  ::close(fd);
  if (impl->map == MAP_FAILED) {
    impl->map = nullptr;
    where(std::string("cannot map: ") + std::strerror(errno));
  }
  const uint8_t* file = impl->bytes();
  const uint64_t file_size = impl->size;

  // The end record sits in the last 22 + 65535 bytes; scan backwards for one whose comment
  // length ends inside the file.
  uint64_t end_pos = UINT64_MAX;
  const uint64_t lowest = file_size - kEndSize > kMaxCommentSize ? file_size - kEndSize - kMaxCommentSize : 0;
  for (uint64_t pos = file_size - kEndSize + 1; pos-- > lowest;) {
    if (rd32(file + pos) == kEndSig && fits(pos + kEndSize, rd16(file + pos + 20), file_size)) {
      end_pos = pos;
      break;
    }
  }
  if (end_pos == UINT64_MAX) where("no end-of-central-directory record (not a ZIP archive, or truncated)");
  const uint8_t* end = file + end_pos;
  uint64_t count = rd16(end + 10), cd_size = rd32(end + 12), cd_offset = rd32(end + 16);
  uint64_t cd_limit = end_pos;
  if (rd16(end + 4) != 0 || rd16(end + 6) != 0 || rd16(end + 8) != rd16(end + 10))
    where("multi-disk ZIP archives are not supported");
  if (end_pos >= kZip64LocatorSize && rd32(end - kZip64LocatorSize) == kZip64LocatorSig) {
    const uint8_t* locator = end - kZip64LocatorSize;
    const uint64_t record = rd64(locator + 8);
    const uint64_t locator_pos = end_pos - kZip64LocatorSize;
    if (!fits(record, kZip64EndSize, locator_pos) || rd32(file + record) != kZip64EndSig)
      where("the ZIP64 end-of-central-directory locator points to offset " + std::to_string(record) +
            ", where no ZIP64 end record lies");
    const uint8_t* z = file + record;
    if (rd32(z + 16) != 0 || rd32(z + 20) != 0 || rd64(z + 24) != rd64(z + 32))
      where("multi-disk ZIP archives are not supported");
    count = rd64(z + 32);
    cd_size = rd64(z + 40);
    cd_offset = rd64(z + 48);
    cd_limit = record;
  }
  if (!fits(cd_offset, cd_size, cd_limit))
    where("the central directory (offset " + std::to_string(cd_offset) + ", " + std::to_string(cd_size) +
          " bytes) lies outside the file of " + std::to_string(file_size) + " bytes");
  if (count > cd_size / kCentralHeaderSize)
    where("the central directory claims " + std::to_string(count) + " entries but holds only " +
          std::to_string(cd_size) + " bytes");

  const uint8_t* cd = file + cd_offset;
  uint64_t p = 0;
  impl->entries.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    const std::string index = "central directory entry " + std::to_string(i);
    if (!fits(p, kCentralHeaderSize, cd_size) || rd32(cd + p) != kCentralHeaderSig)
      where(index + ": no central directory header at offset " + std::to_string(cd_offset + p));
    const uint8_t* h = cd + p;
    const uint16_t flags = rd16(h + 8);
    const uint64_t name_len = rd16(h + 28), extra_len = rd16(h + 30), comment_len = rd16(h + 32);
    if (!fits(p + kCentralHeaderSize, name_len + extra_len + comment_len, cd_size))
      where(index + ": its name and extra fields run past the central directory");
    ZipEntry e;
    e.name.assign(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);
    auto bad = [&](const std::string& what) { where("entry '" + e.name + "': " + what); };
    if (flags & 1) bad("encrypted entries are not supported");
    e.method = rd16(h + 10);
    e.crc32 = rd32(h + 16);
    e.compressed_size = rd32(h + 20);
    e.size = rd32(h + 24);
    uint64_t local = rd32(h + 42);
    const uint8_t* extra = h + kCentralHeaderSize + name_len;
    for (uint64_t q = 0; q + 4 <= extra_len;) {
      const uint16_t id = rd16(extra + q), len = rd16(extra + q + 2);
      if (!fits(q + 4, len, extra_len)) bad("an extra field runs past its entry");
      if (id == 0x0001) {
        // ZIP64 extended information: only the fields saturated in the fixed header, in order.
        const uint8_t* z = extra + q + 4;
        uint64_t used = 0;
        for (uint64_t* field : {&e.size, &e.compressed_size, &local}) {
          if (*field != 0xffffffffu) continue;
          if (used + 8 > len) bad("the ZIP64 extra field is too short");
          *field = rd64(z + used);
          used += 8;
        }
      }
      q += 4 + len;
    }
    if (!fits(local, kLocalHeaderSize, file_size) || rd32(file + local) != kLocalHeaderSig)
      bad("no local header at offset " + std::to_string(local) + " (file of " +
          std::to_string(file_size) + " bytes)");
    const uint64_t local_name = rd16(file + local + 26), local_extra = rd16(file + local + 28);
    if (!fits(local + kLocalHeaderSize, local_name + local_extra, file_size))
      bad("its local header runs past the end of the file");
    if (local_name != name_len ||
        std::memcmp(file + local + kLocalHeaderSize, e.name.data(), name_len) != 0)
      bad("the local header names a different entry");
    e.data_offset = local + kLocalHeaderSize + local_name + local_extra;
    if (!fits(e.data_offset, e.compressed_size, file_size))
      bad("its data (offset " + std::to_string(e.data_offset) + ", " + std::to_string(e.compressed_size) +
          " bytes) runs past the end of the file of " + std::to_string(file_size) + " bytes");
    if (e.method == 0 && e.compressed_size != e.size)
      bad("stored entry declares " + std::to_string(e.compressed_size) + " stored bytes but size " +
          std::to_string(e.size));
    if (!impl->by_name.emplace(e.name, impl->entries.size()).second) bad("appears twice in the archive");
    impl->entries.push_back(std::move(e));
    p += kCentralHeaderSize + name_len + extra_len + comment_len;
  }
  ZipReader out;
  out.impl_ = std::move(impl);
  return out;
}

const std::string& ZipReader::path() const { return impl_->path; }

std::vector<std::string> ZipReader::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->entries.size());
  for (const auto& e : impl_->entries) out.push_back(e.name);
  return out;
}

bool ZipReader::contains(const std::string& name) const { return impl_->by_name.count(name) > 0; }

const ZipEntry& ZipReader::entry(const std::string& name) const {
  auto it = impl_->by_name.find(name);
  if (it == impl_->by_name.end()) fail(kZipOp, impl_->path + ": no entry named '" + name + "'");
  return impl_->entries[it->second];
}

// The fuzzing build (tests/fuzz) computes the CRC-32 but does not compare it, so that mutated
// entries reach the checkpoint loader behind this check instead of stopping here.
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
constexpr bool kCompareCrc = false;
#else
constexpr bool kCompareCrc = true;
#endif

ZipBytes ZipReader::bytes(const std::string& name) const {
  const ZipEntry& e = entry(name);
  if (e.method != 0)
    fail(kZipOp, impl_->path + ": entry '" + name + "' is compressed (method " + std::to_string(e.method) +
                  "); only stored entries can be read, as torch.save writes them");
  uint8_t* data = static_cast<uint8_t*>(impl_->map) + e.data_offset;
  uLong crc = ::crc32(0L, Z_NULL, 0);
  // zlib takes at most 4 GiB per call.
  for (uint64_t done = 0; done < e.size;) {
    const uInt chunk = static_cast<uInt>(std::min<uint64_t>(e.size - done, uint64_t{1} << 30));
    crc = ::crc32(crc, data + done, chunk);
    done += chunk;
  }
  if (kCompareCrc && static_cast<uint32_t>(crc) != e.crc32) {
    char found[16], stated[16];
    std::snprintf(found, sizeof found, "%08x", static_cast<unsigned>(crc));
    std::snprintf(stated, sizeof stated, "%08x", static_cast<unsigned>(e.crc32));
    fail(kZipOp, impl_->path + ": entry '" + name + "' is damaged: its CRC-32 is " + found +
                  " but the archive records " + stated);
  }
  return {data, e.size};
}

std::shared_ptr<const void> ZipReader::keep_alive() const { return impl_; }

}  // namespace kosmosg::io
