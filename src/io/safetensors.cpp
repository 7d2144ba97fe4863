#include "kosmosg/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/file.h"

namespace kosmosg::io {
namespace {

constexpr const char* kSafetensorsOp = "safetensors";
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// LibTorch's limit on a tensor's dimensions.
constexpr size_t kMaxDims = 64;

struct DTypeEntry {
  const char* name;
  at::ScalarType type;
  size_t size;
};

const DTypeEntry kDTypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},
    {"BF16", at::kBFloat16, 2}, {"I64", at::kLong, 8}, {"I32", at::kInt, 4},
    {"I16", at::kShort, 2}, {"I8", at::kChar, 1}, {"U8", at::kByte, 1},
    {"BOOL", at::kBool, 1},
};

const DTypeEntry* find_dtype(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DTypeEntry& dtype_of(at::ScalarType type) {
  for (const auto& d : kDTypes)
    if (d.type == type) return d;
  fail(kSafetensorsOp, std::string("cannot store tensors of dtype ") + c10::toString(type));
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

struct SafeTensors::Impl {
  std::string path;
  void* map = nullptr;
  size_t map_size = 0;
  const uint8_t* data = nullptr;  // start of the data section
  std::map<std::string, TensorInfo> entries;
  std::map<std::string, std::string> metadata;

  ~Impl() {
    if (map) munmap(map, map_size);
  }
};

SafeTensors SafeTensors::open(const std::string& path) {
  auto where = [&](const std::string& what) { fail(kSafetensorsOp, path + ": " + what); };
  uint64_t file_size = 0;
  const int fd = open_regular_file(path, kSafetensorsOp, file_size);
  if (file_size < 8) {
    ::close(fd);
    where("file is " + std::to_string(file_size) +
          " bytes, too short for the 8-byte header length");
  }
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  impl->map_size = file_size;
  impl->map = mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (impl->map == MAP_FAILED) {
    impl->map = nullptr;
    where("cannot map: " + errno_text());
  }
  const auto* bytes = static_cast<const uint8_t*>(impl->map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8)
    where("the JSON header is " + std::to_string(header_len) + " bytes long but the file is only " +
          std::to_string(file_size) + " bytes (truncated or not a safetensors file)");

  std::set<std::string> top_keys;
  std::string duplicate;
  nlohmann::json::parser_callback_t track_keys = [&](int depth, nlohmann::json::parse_event_t ev,
                                                     nlohmann::json& parsed) {
    // A header nests three levels; deeper values would overflow the stack of nlohmann's
    // recursive copy and dump.
    if (depth > static_cast<int>(kMaxJsonDepth))
      where("the header is nested more than " + std::to_string(kMaxJsonDepth) + " levels deep");
    if (ev == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      auto key = parsed.get<std::string>();
      if (!top_keys.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len, track_keys);
  } catch (const nlohmann::json::exception& e) {
    where(std::string("the header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) where("the header is not a JSON object");
  if (!duplicate.empty()) where("tensor name '" + duplicate + "' appears twice in the header");

  impl->data = bytes + 8 + header_len;
  const uint64_t data_size = file_size - 8 - header_len;
  std::vector<std::pair<size_t, std::string>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) where("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) where("__metadata__ value '" + m.key() + "' is not a string");
        impl->metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) { where("tensor '" + name + "': " + what); };
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
      bad("entry needs dtype, shape and data_offsets");
    if (!v["dtype"].is_string()) bad("dtype is not a string");
    TensorInfo info;
    info.dtype = v["dtype"].get<std::string>();
    const DTypeEntry* dt = find_dtype(info.dtype);
    if (!dt) bad("unsupported dtype '" + info.dtype + "'");
    if (!v["shape"].is_array()) bad("shape is not an array");
    if (v["shape"].size() > kMaxDims) bad("shape has " + std::to_string(v["shape"].size()) + " dimensions");
    // Every dimension is checked, zero or not: behind a 0 a dimension of 2^63 or more would
    // still turn negative as an int64 and reach LibTorch.
    uint64_t numel = 1, nonzero = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned()) bad("shape holds a value that is not a non-negative integer");
      const uint64_t n = d.get<uint64_t>();
      if (n != 0 && nonzero > static_cast<uint64_t>(INT64_MAX) / n)
        bad("shape " + brief(v["shape"]) + " has more elements than a tensor can index (2^63)");
      if (n != 0) nonzero *= n;
      if (n != 0 && numel > data_size / n) bad("shape " + brief(v["shape"]) + " is larger than the file");
      numel *= n;
      info.shape.push_back(static_cast<int64_t>(n));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      bad("data_offsets must be two non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_size)
      bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
          "] lie outside the data section of " + std::to_string(data_size) + " bytes");
    if (end - begin != numel * dt->size)
      bad("data_offsets span " + std::to_string(end - begin) + " bytes but " + info.dtype +
          " × " + brief(v["shape"]) + " needs " + std::to_string(numel * dt->size));
    info.begin = begin;
    info.end = end;
    if (end > begin) ranges.emplace_back(begin, name);
    impl->entries.emplace(name, std::move(info));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& prev = impl->entries.at(ranges[i - 1].second);
    if (ranges[i].first < prev.end)
      where("tensors '" + ranges[i - 1].second + "' and '" + ranges[i].second +
            "' overlap in the data section");
  }
  SafeTensors out;
  out.impl_ = std::move(impl);
  return out;
}

const std::string& SafeTensors::path() const { return impl_->path; }

std::vector<std::string> SafeTensors::keys() const {
  std::vector<std::string> out;
  out.reserve(impl_->entries.size());
  for (const auto& [k, v] : impl_->entries) out.push_back(k);
  return out;
}

bool SafeTensors::contains(const std::string& name) const { return impl_->entries.count(name) > 0; }

const TensorInfo& SafeTensors::info(const std::string& name) const {
  auto it = impl_->entries.find(name);
  if (it == impl_->entries.end()) fail(kSafetensorsOp, impl_->path + ": no tensor named '" + name + "'");
  return it->second;
}

at::Tensor SafeTensors::get(const std::string& name) const {
  const TensorInfo& info = this->info(name);
  const DTypeEntry* dt = find_dtype(info.dtype);
  auto options = at::TensorOptions().dtype(dt->type);
  if (info.end == info.begin) return at::empty(info.shape, options);
  auto* ptr = const_cast<uint8_t*>(impl_->data + info.begin);
  if (reinterpret_cast<uintptr_t>(ptr) % dt->size != 0) {
    auto out = at::empty(info.shape, options);
    std::memcpy(out.data_ptr(), ptr, info.end - info.begin);
    return out;
  }
  auto keep_alive = impl_;
  return at::from_blob(
      ptr, info.shape, [keep_alive](void*) {}, options);
}

TensorMap SafeTensors::tensors(const std::string& prefix) const {
  TensorMap out;
  for (const auto& [k, v] : impl_->entries)
    if (k.compare(0, prefix.size(), prefix) == 0) out.emplace(k.substr(prefix.size()), get(k));
  return out;
}

const std::map<std::string, std::string>& SafeTensors::metadata() const { return impl_->metadata; }

void write_file_atomically(const std::string& path, const std::function<void(std::FILE*)>& write) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("write", "cannot create " + tmp + ": " + errno_text());
  try {
    write(f);
    if (std::fflush(f) != 0 || ::fsync(fileno(f)) != 0)
      fail("write", "cannot write " + tmp + ": " + errno_text());
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fclose(f) != 0) {
    std::remove(tmp.c_str());
    fail("write", "cannot write " + tmp + ": " + errno_text());
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    std::remove(tmp.c_str());
    fail("write", "cannot rename " + tmp + " to " + path + ": " + why);
  }
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void save_safetensors(const std::string& path, const TensorMap& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") fail(kSafetensorsOp, path + ": '__metadata__' cannot name a tensor");
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const auto& dt = dtype_of(c.scalar_type());
    const size_t nbytes = static_cast<size_t>(c.numel()) * dt.size;
    header[name] = {{"dtype", dt.name}, {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    contiguous.push_back(std::move(c));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  write_file_atomically(path, [&](std::FILE* f) {
    uint8_t len[8];
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
    for (const auto& c : contiguous) {
      const size_t nbytes = static_cast<size_t>(c.numel()) * c.element_size();
      ok = ok && (nbytes == 0 || std::fwrite(c.data_ptr(), 1, nbytes, f) == nbytes);
    }
    if (!ok) fail(kSafetensorsOp, "cannot write " + path + ": " + errno_text());
  });
}

void write_text_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, [&](std::FILE* f) {
    if (std::fwrite(text.data(), 1, text.size(), f) != text.size()) fail("write", "cannot write " + path + ": " + errno_text());
  });
}

void link_or_copy(const std::string& from, const std::string& to) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::remove(to, ec);
  fs::create_hard_link(from, to, ec);
  if (ec) fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

}  // namespace kosmosg::io
