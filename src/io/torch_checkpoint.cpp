#include "kosmosg/io/torch_checkpoint.h"

#include <unistd.h>

#include <cstring>
#include <unordered_map>
#include <vector>

#include "kosmosg/error.h"
#include "kosmosg/io/file.h"
#include "kosmosg/io/zip.h"

namespace kosmosg::io {
namespace {

constexpr const char* kCheckpointOp = "checkpoint";
constexpr int kMaxInterpolationRounds = 16;
// A config's JSON may repeat what its pickle shares (omegaconf shares little) up to this many
// times its stored size, plus an allowance; beyond that sharing is an expansion attack.
constexpr uint64_t kJsonGrowth = 16;
constexpr uint64_t kJsonAllowance = 1 << 20;

using K = PickleValue::Kind;

struct StorageType {
  const char* name;
  at::ScalarType dtype;
};

const StorageType kStorageTypes[] = {
    {"HalfStorage", at::kHalf},   {"FloatStorage", at::kFloat}, {"BFloat16Storage", at::kBFloat16},
    {"DoubleStorage", at::kDouble}, {"LongStorage", at::kLong}, {"IntStorage", at::kInt},
    {"ByteStorage", at::kByte},   {"BoolStorage", at::kBool},   {"CharStorage", at::kChar},
    {"ShortStorage", at::kShort},
};

// Resolves ('storage', torch.<T>Storage, key, location, numel) persistent ids to 1-D tensors
// over the zip entry `<archive>/data/<key>`, one tensor per key so that sharing survives.
class StorageLoader {
 public:
  StorageLoader(ZipReader zip, std::string archive) : zip_(std::move(zip)), archive_(std::move(archive)) {}

  PickleValue operator()(const PickleValue& pid) {
    auto bad = [&](const std::string& what) { fail(kCheckpointOp, zip_.path() + ": " + what); };
    if (pid.kind() != K::Tuple || pid.as_tuple().size() != 5)
      bad("a persistent id must be ('storage', type, key, location, numel), found " + pid.describe());
    const auto& id = pid.as_tuple();
    if (id[0].kind() != K::String || id[0].as_string() != "storage" || id[1].kind() != K::Global ||
        id[2].kind() != K::String || id[3].kind() != K::String || id[4].kind() != K::Int || id[4].as_int() < 0)
      bad("a persistent id must be ('storage', type, key, location, numel)");
    const PickleGlobal& type = id[1].as_global();
    const StorageType* st = nullptr;
    for (const auto& t : kStorageTypes)
      if (type.module == "torch" && type.name == t.name) st = &t;
    if (!st) bad("unsupported storage type " + type.full_name());
    const std::string& key = id[2].as_string();
    const int64_t numel = id[4].as_int();
    auto cached = cache_.find(key);
    if (cached != cache_.end()) {
      const at::Tensor& t = cached->second;
      if (t.scalar_type() != st->dtype || t.numel() != numel)
        bad("storage '" + key + "' is used both as " + c10::toString(t.scalar_type()) + " × " +
            std::to_string(t.numel()) + " and as " + type.full_name() + " × " + std::to_string(numel));
      return PickleValue::tensor(t);
    }
    const std::string entry = archive_ + "/data/" + key;
    if (!zip_.contains(entry)) bad("storage '" + key + "' has no entry '" + entry + "'");
    const ZipBytes bytes = zip_.bytes(entry);
    const auto item = static_cast<uint64_t>(c10::elementSize(st->dtype));
    if (static_cast<uint64_t>(numel) > bytes.size / item || bytes.size != static_cast<uint64_t>(numel) * item)
      bad("entry '" + entry + "' holds " + std::to_string(bytes.size) + " bytes but its " + type.full_name() +
          " of " + std::to_string(numel) + " elements needs " + std::to_string(numel * item));
    const auto options = at::TensorOptions().dtype(st->dtype);
    at::Tensor t;
    if (numel == 0) {
      t = at::empty({0}, options);
    } else if (reinterpret_cast<uintptr_t>(bytes.data) % item != 0) {
      t = at::empty({numel}, options);
      std::memcpy(t.data_ptr(), bytes.data, bytes.size);
    } else {
      auto keep_alive = zip_.keep_alive();
      t = at::from_blob(bytes.data, {numel}, [keep_alive](void*) {}, options);
    }
    cache_.emplace(key, t);
    return PickleValue::tensor(std::move(t));
  }

 private:
  ZipReader zip_;
  std::string archive_;
  std::map<std::string, at::Tensor> cache_;
};

std::string archive_of(const ZipReader& zip) {
  std::string archive;
  for (const auto& name : zip.names()) {
    const auto slash = name.find('/');
    if (slash == std::string::npos || name.compare(slash, std::string::npos, "/data.pkl") != 0) continue;
    if (!archive.empty())
      fail(kCheckpointOp, zip.path() + ": two data.pkl entries ('" + archive + "/data.pkl' and '" + name +
                    "'); a torch.save file has one");
    archive = name.substr(0, slash);
  }
  if (archive.empty())
    fail(kCheckpointOp, zip.path() + ": the zip archive has no '<folder>/data.pkl' entry (not a torch.save checkpoint)");
  return archive;
}

std::string join_path(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string key_text(const PickleValue& key, const std::string& what, const std::string& path) {
  if (key.kind() == K::String) return key.as_string();
  if (key.kind() == K::Int) return std::to_string(key.as_int());
  fail(kCheckpointOp, what + ": key " + key.describe() + " at '" + path + "' cannot be a JSON object key");
}

const PickleValue& state_entry(const PickleObject& o, const char* name, const std::string& what,
                               const std::string& path) {
  if (o.state.kind() != K::Dict)
    fail(kCheckpointOp, what + ": " + o.class_name + " at '" + path + "' has no state dict");
  const PickleValue* v = o.state.as_dict().find(name);
  if (!v) fail(kCheckpointOp, what + ": " + o.class_name + " at '" + path + "' has no '" + name + "' in its state");
  return *v;
}

nlohmann::json to_json(const PickleValue& v, const std::string& what, const std::string& path);

// What converting a value to JSON produces, in values plus string bytes, counted twice: `expanded`
// as the JSON will hold it (a shared container once per reference) and `stored` as the value tree
// holds it (each container once). Follows to_json's path through omegaconf objects; saturates.
class JsonSize {
 public:
  uint64_t expanded(const PickleValue& v) {
    const void* id = node(v);
    if (id) {
      auto done = sizes_.find(id);
      if (done != sizes_.end()) return done->second;
    }
    uint64_t size = 1;
    if (v.kind() == K::String) size += v.as_string().size();
    const auto inner = children(v);
    for (const PickleValue* child : inner) size = add(size, expanded(*child));
    if (id) {
      stored_ = add(stored_, 1 + inner.size());
      sizes_.emplace(id, size);
    } else {
      stored_ = add(stored_, size);
    }
    return size;
  }
  uint64_t stored() const { return stored_; }

 private:
  static uint64_t add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
  static const void* node(const PickleValue& v) {
    switch (v.kind()) {
      case K::List: return &v.as_list();
      case K::Tuple: return &v.as_tuple();
      case K::Dict: return &v.as_dict();
      case K::Object: return &v.as_object();
      default: return nullptr;
    }
  }
  static std::vector<const PickleValue*> children(const PickleValue& v) {
    std::vector<const PickleValue*> out;
    auto items = [&](const std::vector<PickleValue>& list) {
      for (const auto& item : list) out.push_back(&item);
    };
    switch (v.kind()) {
      case K::List: items(v.as_list()); break;
      case K::Tuple: items(v.as_tuple()); break;
      case K::Dict:
        for (const auto& [key, value] : v.as_dict().items) out.push_back(&key), out.push_back(&value);
        break;
      case K::Object: {
        const PickleObject& o = v.as_object();
        if (o.state.kind() != K::Dict) break;
        for (const char* name : {"_val", "_content"})
          if (const PickleValue* inner = o.state.as_dict().find(name)) out.push_back(inner);
        break;
      }
      default: break;
    }
    return out;
  }
  std::unordered_map<const void*, uint64_t> sizes_;
  uint64_t stored_ = 0;
};

nlohmann::json sequence_to_json(const std::vector<PickleValue>& items, const std::string& what,
                                const std::string& path) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < items.size(); ++i)
    out.push_back(to_json(items[i], what, path + "[" + std::to_string(i) + "]"));
  return out;
}

nlohmann::json dict_to_json(const PickleDict& d, const std::string& what, const std::string& path) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& [k, val] : d.items) {
    const std::string key = key_text(k, what, path);
    out[key] = to_json(val, what, join_path(path, key));
  }
  return out;
}

// omegaconf keeps a container's items in its state's `_content` (a dict or list of nodes, or
// None / a "???" or "${...}" string) and a leaf's value in `_val`.
nlohmann::json omegaconf_to_json(const PickleObject& o, const std::string& what, const std::string& path) {
  const std::string& cls = o.class_name;
  if (cls == "omegaconf.nodes.AnyNode") return to_json(state_entry(o, "_val", what, path), what, path);
  if (cls != "omegaconf.dictconfig.DictConfig" && cls != "omegaconf.listconfig.ListConfig")
    fail(kCheckpointOp, what + ": " + cls + " at '" + path + "' is not a config value");
  const PickleValue& content = state_entry(o, "_content", what, path);
  switch (content.kind()) {
    case K::None:
    case K::String: return to_json(content, what, path);
    case K::Dict:
      if (cls == "omegaconf.dictconfig.DictConfig") return dict_to_json(content.as_dict(), what, path);
      break;
    case K::List:
      if (cls == "omegaconf.listconfig.ListConfig") return sequence_to_json(content.as_list(), what, path);
      break;
    default: break;
  }
  fail(kCheckpointOp, what + ": " + cls + " at '" + path + "' holds a " + content.describe() + " as its content");
}

nlohmann::json to_json(const PickleValue& v, const std::string& what, const std::string& path) {
  switch (v.kind()) {
    case K::None: return nullptr;
    case K::Bool: return v.as_bool();
    case K::Int: return v.as_int();
    case K::Float: return v.as_float();
    case K::String: return v.as_string();
    case K::List: return sequence_to_json(v.as_list(), what, path);
    case K::Tuple: return sequence_to_json(v.as_tuple(), what, path);
    case K::Dict: return dict_to_json(v.as_dict(), what, path);
    case K::Object: return omegaconf_to_json(v.as_object(), what, path);
    default: break;
  }
  fail(kCheckpointOp, what + ": a " + v.describe() + " at '" + (path.empty() ? "(top)" : path) + "' has no JSON form");
}

// Resolves whole-string absolute interpolations "${a.b.c}" of scalars against `root`, as omegaconf
// does when a value is read; anything else (relative or embedded interpolations) stays as written.
// Each substitution's bytes are taken from `budget`, which bounds what references to one long
// value can add up to.
bool resolve_interpolations(nlohmann::json& node, const nlohmann::json& root, uint64_t& budget,
                            const std::string& what) {
  bool changed = false;
  if (node.is_object() || node.is_array()) {
    for (auto& child : node) changed = resolve_interpolations(child, root, budget, what) || changed;
    return changed;
  }
  if (!node.is_string()) return false;
  const std::string& s = node.get_ref<const std::string&>();
  if (s.size() < 4 || s.compare(0, 2, "${") != 0 || s.back() != '}' || s[2] == '.' ||
      s.find_first_of("${}:", 2) != s.size() - 1)
    return false;
  const nlohmann::json* target = &root;
  std::string rest = s.substr(2, s.size() - 3);
  while (!rest.empty()) {
    const auto dot = rest.find('.');
    const std::string part = rest.substr(0, dot);
    rest = dot == std::string::npos ? "" : rest.substr(dot + 1);
    if (!target->is_object() || !target->contains(part)) return false;
    target = &(*target)[part];
  }
  // Only scalars are substituted: copying containers could grow a hostile config without bound.
  if (target->is_structured()) return false;
  const uint64_t cost = 1 + (target->is_string() ? target->get_ref<const std::string&>().size() : 0);
  if (cost > budget) fail(kCheckpointOp, what + ": its interpolations ${...} expand to more text than the config holds");
  budget -= cost;
  nlohmann::json value = *target;
  node = std::move(value);
  return true;
}

}  // namespace

nlohmann::json pickle_to_json(const PickleValue& value, const std::string& what) {
  JsonSize size;
  const uint64_t expanded = size.expanded(value);
  const uint64_t limit = kJsonGrowth * size.stored() + kJsonAllowance;
  if (expanded > limit)
    fail(kCheckpointOp, what + ": its shared parts would expand to " +
                  (expanded == UINT64_MAX ? std::string("more than 2^64") : std::to_string(expanded)) +
                  " JSON values, more than the " + std::to_string(limit) + " allowed for the " +
                  std::to_string(size.stored()) + " it holds");
  return to_json(value, what, "");
}

PickleValue load_torch_checkpoint(const std::string& path) {
  if (!is_zip_file(path)) {
    uint64_t size = 0;
    const int fd = open_regular_file(path, kCheckpointOp, size);
    unsigned char first = 0;
    const bool pickle = ::read(fd, &first, 1) == 1 && first == 0x80;
    ::close(fd);
    if (pickle)
      fail(kCheckpointOp, path + ": this is the legacy (non-zip) torch.save format, which is not supported; "
                       "re-save it with torch.save from PyTorch 1.6 or newer");
    fail(kCheckpointOp, path + ": not a PyTorch checkpoint (no ZIP signature)");
  }
  ZipReader zip = ZipReader::open(path);
  const std::string archive = archive_of(zip);
  const std::string byteorder = archive + "/byteorder";
  if (zip.contains(byteorder)) {
    const ZipBytes b = zip.bytes(byteorder);
    const std::string order(reinterpret_cast<const char*>(b.data), b.size);
    if (order != "little") fail(kCheckpointOp, path + ": tensors are stored '" + order + "'-endian; only little-endian is supported");
  }
  const std::string pkl = archive + "/data.pkl";
  const ZipBytes data = zip.bytes(pkl);
  UnpickleOptions options;
  options.source = path + ": " + pkl;
  options.persistent_load = StorageLoader(zip, archive);
  return unpickle(data.data, data.size, options);
}

FairseqCheckpoint read_fairseq_checkpoint(const std::string& path) {
  return read_fairseq_checkpoint(load_torch_checkpoint(path), path);
}

FairseqCheckpoint read_fairseq_checkpoint(PickleValue state, const std::string& path) {
  FairseqCheckpoint out;
  out.state = std::move(state);
  if (out.state.kind() != K::Dict)
    fail(kCheckpointOp, path + ": not a fairseq checkpoint: the top level is a " + out.state.describe() + ", not a dict");
  const PickleDict& top = out.state.as_dict();
  const PickleValue* model = top.find("model");
  if (!model) fail(kCheckpointOp, path + ": not a fairseq checkpoint: no 'model' entry");
  if (model->kind() != K::Dict)
    fail(kCheckpointOp, path + ": not a fairseq checkpoint: 'model' is a " + model->describe() + ", not a state dict");
  for (const auto& [k, v] : model->as_dict().items) {
    if (k.kind() != K::String) fail(kCheckpointOp, path + ": the state dict has a key that is a " + k.describe());
    if (v.kind() != K::Tensor)
      fail(kCheckpointOp, path + ": state dict entry '" + k.as_string() + "' is a " + v.describe() + ", not a tensor");
    out.model.emplace(k.as_string(), v.as_tensor());
  }
  if (const PickleValue* cfg = top.find("cfg"); cfg && !cfg->is_none()) {
    out.cfg = pickle_to_json(*cfg, path + ": cfg");
    uint64_t budget = kJsonGrowth * JsonSize().expanded(*cfg) + kJsonAllowance;
    for (int round = 0; round < kMaxInterpolationRounds &&
                        resolve_interpolations(out.cfg, out.cfg, budget, path + ": cfg");
         ++round) {
    }
  }
  if (const PickleValue* history = top.find("optimizer_history");
      history && history->kind() == K::List && !history->as_list().empty()) {
    const PickleValue& last = history->as_list().back();
    if (last.kind() == K::Dict)
      if (const PickleValue* n = last.as_dict().find("num_updates"); n && n->kind() == K::Int) out.num_updates = n->as_int();
  }
  return out;
}

}  // namespace kosmosg::io
