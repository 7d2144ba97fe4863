#include "kosmosg/io/pickle.h"

#include <cmath>
#include <cstring>
#include <optional>
#include <unordered_set>

#include "kosmosg/error.h"

namespace kosmosg::io {
namespace {

constexpr const char* kPickleOp = "pickle";
constexpr size_t kMaxDepth = 1000;
constexpr int kMaxProtocol = 5;
constexpr size_t kMaxTensorDims = 64;
// The work a pickle may cause (values copied plus bytes of dict keys encoded): this many units
// per input byte, plus an allowance for small pickles. torch.save's pickles need about one.
constexpr uint64_t kWorkPerByte = 16;
constexpr uint64_t kWorkAllowance = 1 << 20;

// What an accepted global does when it is called (REDUCE / NEWOBJ).
enum class Callable { Dict, DefaultDict, List, Long, RebuildTensor, RebuildParameter, Inert, Object };

struct AllowedGlobal {
  const char* module;
  const char* name;
  Callable call;
};

// The complete list of globals a torch / fairseq checkpoint needs; everything else is refused.
const AllowedGlobal kAllowedGlobals[] = {
    {"collections", "OrderedDict", Callable::Dict},
    {"collections", "defaultdict", Callable::DefaultDict},
    {"__builtin__", "dict", Callable::Dict},
    {"__builtin__", "list", Callable::List},
    {"__builtin__", "long", Callable::Long},
    {"builtins", "dict", Callable::Dict},
    {"builtins", "list", Callable::List},
    {"builtins", "int", Callable::Long},
    {"torch._utils", "_rebuild_tensor_v2", Callable::RebuildTensor},
    {"torch._utils", "_rebuild_parameter", Callable::RebuildParameter},
    {"torch", "HalfStorage", Callable::Inert},
    {"torch", "FloatStorage", Callable::Inert},
    {"torch", "BFloat16Storage", Callable::Inert},
    {"torch", "DoubleStorage", Callable::Inert},
    {"torch", "LongStorage", Callable::Inert},
    {"torch", "IntStorage", Callable::Inert},
    {"torch", "ByteStorage", Callable::Inert},
    {"torch", "BoolStorage", Callable::Inert},
    {"torch", "CharStorage", Callable::Inert},
    {"torch", "ShortStorage", Callable::Inert},
    {"typing", "Any", Callable::Inert},
    {"omegaconf.dictconfig", "DictConfig", Callable::Object},
    {"omegaconf.listconfig", "ListConfig", Callable::Object},
    {"omegaconf.nodes", "AnyNode", Callable::Object},
    {"omegaconf.base", "Metadata", Callable::Object},
    {"omegaconf.base", "ContainerMetadata", Callable::Object},
};

const AllowedGlobal* find_allowed(const std::string& module, const std::string& name) {
  for (const auto& g : kAllowedGlobals)
    if (module == g.module && name == g.name) return &g;
  return nullptr;
}

const char* opcode_name(uint8_t op) {
  switch (op) {
    case 0x80: return "PROTO";
    case 0x95: return "FRAME";
    case '.': return "STOP";
    case '(': return "MARK";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case '}': return "EMPTY_DICT";
    case ']': return "EMPTY_LIST";
    case ')': return "EMPTY_TUPLE";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'M': return "BININT2";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 'G': return "BINFLOAT";
    case 0x8c: return "SHORT_BINUNICODE";
    case 'X': return "BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x8e: return "BINBYTES8";
    case 0x96: return "BYTEARRAY8";
    case 'N': return "NONE";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 't': return "TUPLE";
    case 'l': return "LIST";
    case 'a': return "APPEND";
    case 'e': return "APPENDS";
    case 'd': return "DICT";
    case 's': return "SETITEM";
    case 'u': return "SETITEMS";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 0x94: return "MEMOIZE";
    case 'h': return "BINGET";
    case 'j': return "LONG_BINGET";
    case 'c': return "GLOBAL";
    case 0x93: return "STACK_GLOBAL";
    case 'R': return "REDUCE";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 'b': return "BUILD";
    case 'Q': return "BINPERSID";
    case 'P': return "PERSID";
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'p': return "PUT";
    case 'g': return "GET";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return nullptr;
  }
}

enum class KeyCode { Hashable, Unhashable, TooLong };

// Appends an unambiguous encoding of a hashable value to `out`, equal exactly when Python would
// find the keys equal (True == 1 == 1.0); objects and tensors hash by identity, as in Python.
// Unhashable are lists, dicts and keys nested deeper than kMaxDepth. The encoding stops once it
// passes `max_bytes`: a tuple holding one shared tuple twice, nested n deep, encodes to 2^n bytes.
KeyCode encode_key(const PickleValue& v, std::string& out, size_t depth, size_t max_bytes) {
  using K = PickleValue::Kind;
  if (depth > kMaxDepth) return KeyCode::Unhashable;
  auto length_prefixed = [&](char tag, const std::string& s) {
    if (s.size() > max_bytes - std::min(max_bytes, out.size())) return KeyCode::TooLong;
    out += tag;
    out += std::to_string(s.size());
    out += ':';
    out += s;
    return KeyCode::Hashable;
  };
  char buf[32];
  switch (v.kind()) {
    case K::None: out += 'N'; return KeyCode::Hashable;
    case K::Bool: out += v.as_bool() ? "i1;" : "i0;"; return KeyCode::Hashable;
    case K::Int: out += 'i' + std::to_string(v.as_int()) + ';'; return KeyCode::Hashable;
    case K::Float: {
      const double d = v.as_float();
      if (std::isfinite(d) && d == std::trunc(d) && std::fabs(d) < 9.2e18) {
        out += 'i' + std::to_string(static_cast<int64_t>(d)) + ';';
      } else {
        uint64_t bits;
        std::memcpy(&bits, &d, sizeof bits);
        std::snprintf(buf, sizeof buf, "f%016llx;", static_cast<unsigned long long>(bits));
        out += buf;
      }
      return KeyCode::Hashable;
    }
    case K::String: return length_prefixed('s', v.as_string());
    case K::Bytes: return length_prefixed('b', v.as_bytes());
    case K::Global: return length_prefixed('g', v.as_global().full_name());
    case K::Tuple: {
      const auto& items = v.as_tuple();
      out += 't' + std::to_string(items.size()) + '(';
      for (const auto& item : items) {
        const KeyCode code = encode_key(item, out, depth + 1, max_bytes);
        if (code != KeyCode::Hashable) return code;
        if (out.size() > max_bytes) return KeyCode::TooLong;
      }
      out += ')';
      return KeyCode::Hashable;
    }
    case K::Object:
      std::snprintf(buf, sizeof buf, "o%p;", static_cast<const void*>(&v.as_object()));
      out += buf;
      return KeyCode::Hashable;
    case K::Tensor:
      std::snprintf(buf, sizeof buf, "T%p;", static_cast<const void*>(v.as_tensor().unsafeGetTensorImpl()));
      out += buf;
      return KeyCode::Hashable;
    case K::List:
    case K::Dict: return KeyCode::Unhashable;
  }
  return KeyCode::Unhashable;
}

// The encoding of `v` as a dict key, or nullopt (with `code` saying why).
std::optional<std::string> key_of(const PickleValue& v, size_t max_bytes = SIZE_MAX, KeyCode* code = nullptr) {
  std::string out;
  const KeyCode c = encode_key(v, out, 0, max_bytes);
  if (code) *code = c;
  if (c != KeyCode::Hashable || out.size() > max_bytes) {
    if (code && c == KeyCode::Hashable) *code = KeyCode::TooLong;
    return std::nullopt;
  }
  return out;
}

const char* kind_name(PickleValue::Kind k) {
  using K = PickleValue::Kind;
  switch (k) {
    case K::None: return "none";
    case K::Bool: return "bool";
    case K::Int: return "int";
    case K::Float: return "float";
    case K::String: return "str";
    case K::Bytes: return "bytes";
    case K::List: return "list";
    case K::Tuple: return "tuple";
    case K::Dict: return "dict";
    case K::Tensor: return "tensor";
    case K::Global: return "global";
    case K::Object: return "object";
  }
  return "?";
}

}  // namespace

// ---- PickleValue ----

PickleValue PickleValue::boolean(bool v) {
  PickleValue p;
  p.v_ = v;
  return p;
}
PickleValue PickleValue::integer(int64_t v) {
  PickleValue p;
  p.v_ = v;
  return p;
}
PickleValue PickleValue::real(double v) {
  PickleValue p;
  p.v_ = v;
  return p;
}
PickleValue PickleValue::string(std::string v) {
  PickleValue p;
  p.v_ = std::make_shared<const std::string>(std::move(v));
  return p;
}
PickleValue PickleValue::bytes(std::string v) {
  PickleValue p;
  p.v_ = std::make_shared<const Bytes>(Bytes{std::move(v)});
  return p;
}
PickleValue PickleValue::tensor(at::Tensor v) {
  PickleValue p;
  p.v_ = std::move(v);
  return p;
}
PickleValue PickleValue::list(std::vector<PickleValue> items) {
  PickleValue p;
  p.v_ = std::make_shared<List>(List{std::move(items)});
  return p;
}
PickleValue PickleValue::tuple(std::vector<PickleValue> items) {
  PickleValue p;
  p.v_ = std::make_shared<Tuple>(Tuple{std::move(items)});
  return p;
}
PickleValue PickleValue::dict(std::shared_ptr<PickleDict> d) {
  PickleValue p;
  p.v_ = std::move(d);
  return p;
}
PickleValue PickleValue::global(std::string module, std::string name) {
  PickleValue p;
  p.v_ = PickleGlobal{std::move(module), std::move(name)};
  return p;
}
PickleValue PickleValue::object(std::shared_ptr<PickleObject> o) {
  PickleValue p;
  p.v_ = std::move(o);
  return p;
}

// The variant's alternatives are declared in the order of Kind.
PickleValue::Kind PickleValue::kind() const {
  static_assert(std::variant_size_v<decltype(v_)> == static_cast<size_t>(Kind::Object) + 1);
  return static_cast<Kind>(v_.index());
}

std::string PickleValue::describe() const {
  if (kind() == Kind::Object) return "object " + as_object().class_name;
  if (kind() == Kind::Global) return "global " + as_global().full_name();
  return kind_name(kind());
}

namespace {
[[noreturn]] void wrong_kind(const PickleValue& v, const char* expected) {
  fail(kPickleOp, std::string("expected a ") + expected + ", found " + v.describe());
}
}  // namespace

bool PickleValue::as_bool() const {
  if (auto* b = std::get_if<bool>(&v_)) return *b;
  wrong_kind(*this, "bool");
}
int64_t PickleValue::as_int() const {
  if (auto* i = std::get_if<int64_t>(&v_)) return *i;
  wrong_kind(*this, "int");
}
double PickleValue::as_float() const {
  if (auto* d = std::get_if<double>(&v_)) return *d;
  if (auto* i = std::get_if<int64_t>(&v_)) return static_cast<double>(*i);
  wrong_kind(*this, "float");
}
const std::string& PickleValue::as_string() const {
  if (auto* s = std::get_if<std::shared_ptr<const std::string>>(&v_)) return **s;
  wrong_kind(*this, "str");
}
const std::string& PickleValue::as_bytes() const {
  if (auto* b = std::get_if<std::shared_ptr<const Bytes>>(&v_)) return (*b)->data;
  wrong_kind(*this, "bytes");
}
const std::vector<PickleValue>& PickleValue::as_list() const {
  if (auto* l = std::get_if<std::shared_ptr<List>>(&v_)) return (*l)->items;
  wrong_kind(*this, "list");
}
const std::vector<PickleValue>& PickleValue::as_tuple() const {
  if (auto* t = std::get_if<std::shared_ptr<Tuple>>(&v_)) return (*t)->items;
  wrong_kind(*this, "tuple");
}
const PickleDict& PickleValue::as_dict() const {
  if (auto* d = std::get_if<std::shared_ptr<PickleDict>>(&v_)) return **d;
  wrong_kind(*this, "dict");
}
const at::Tensor& PickleValue::as_tensor() const {
  if (auto* t = std::get_if<at::Tensor>(&v_)) return *t;
  wrong_kind(*this, "tensor");
}
const PickleGlobal& PickleValue::as_global() const {
  if (auto* g = std::get_if<PickleGlobal>(&v_)) return *g;
  wrong_kind(*this, "global");
}
const PickleObject& PickleValue::as_object() const {
  if (auto* o = std::get_if<std::shared_ptr<PickleObject>>(&v_)) return **o;
  wrong_kind(*this, "object");
}

// ---- PickleDict ----

const PickleValue* PickleDict::find(const PickleValue& key) const {
  auto k = key_of(key);
  if (!k) return nullptr;
  auto it = index_.find(*k);
  return it == index_.end() ? nullptr : &items[it->second].second;
}

const PickleValue* PickleDict::find(const std::string& key) const {
  return find(PickleValue::string(key));
}

const PickleValue& PickleDict::at(const std::string& key) const {
  if (const PickleValue* v = find(key)) return *v;
  std::string keys;
  size_t shown = 0;
  for (const auto& [k, v] : items) {
    if (shown++ == 12) {
      keys += ", ...";
      break;
    }
    keys += (keys.empty() ? "" : ", ") +
            (k.kind() == PickleValue::Kind::String ? "'" + k.as_string() + "'" : k.describe());
  }
  fail(kPickleOp, "no key '" + key + "' in a dict of " + std::to_string(items.size()) + " entries (" +
                (keys.empty() ? "empty" : keys) + ")");
}

void PickleDict::set(PickleValue key, PickleValue value) {
  auto k = key_of(key);
  if (!k) fail(kPickleOp, "a dict key must be hashable, found " + key.describe());
  insert(std::move(*k), std::move(key), std::move(value));
}

void PickleDict::insert(std::string code, PickleValue key, PickleValue value) {
  auto [it, inserted] = index_.emplace(std::move(code), items.size());
  if (inserted)
    items.emplace_back(std::move(key), std::move(value));
  else
    items[it->second].second = std::move(value);
}

// ---- Unpickler ----

class Unpickler {
 public:
  Unpickler(const uint8_t* data, size_t size, const UnpickleOptions& options)
      : data_(data), size_(size), options_(options), work_limit_(kWorkPerByte * size + kWorkAllowance) {}

  PickleValue run() {
    try {
      PickleValue root = loop();
      stack_.clear();
      memo_.clear();
      finish(root);
      return root;
    } catch (...) {
      teardown();
      throw;
    }
  }

 private:
  using K = PickleValue::Kind;

  [[noreturn]] void error(const std::string& what) const {
    const char* name = opcode_name(op_);
    char code[8];
    std::snprintf(code, sizeof code, "0x%02x", op_);
    fail(kPickleOp, options_.source + ": " + what + " (opcode " + (name ? name : code) + " at byte " +
                  std::to_string(op_pos_) + ")");
  }

  // Charges `units` of work (values copied, bytes of dict keys encoded) to the budget of this
  // input: memo and DUP let a few bytes stand for a value used many times, so every conversion
  // that copies or encodes a value pays for it, and the total stays a fixed multiple of the size.
  void charge(uint64_t units) {
    work_ += units;
    if (work_ > work_limit_)
      error("the data expands to more than the " + std::to_string(work_limit_) + " values this pickle of " +
            std::to_string(size_) + " bytes may produce (shared values copied over and over)");
  }
  std::vector<PickleValue> charged_copy(const std::vector<PickleValue>& items) {
    charge(items.size());
    return items;
  }

  const uint8_t* take(uint64_t n) {
    if (n > size_ - pos_)
      error("truncated: needs " + std::to_string(n) + " more bytes but only " + std::to_string(size_ - pos_) +
            " remain");
    const uint8_t* p = data_ + pos_;
    pos_ += static_cast<size_t>(n);
    return p;
  }
  uint64_t read_le(int n) {
    const uint8_t* p = take(n);
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
  }
  std::string read_string(uint64_t n) {
    const uint8_t* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
  std::string read_line() {
    const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (!nl) error("truncated: a GLOBAL name lacks its terminating newline");
    const size_t n = static_cast<const uint8_t*>(nl) - (data_ + pos_);
    std::string s = read_string(n);
    ++pos_;
    return s;
  }
  // LONG1 / LONG4: little-endian two's complement of n bytes, accepted when it fits in int64.
  int64_t read_long(uint64_t n) {
    const uint8_t* p = take(n);
    if (n == 0) return 0;
    const bool negative = p[n - 1] & 0x80;
    bool fits = true;
    for (uint64_t i = 8; i < n; ++i) fits = fits && p[i] == (negative ? 0xff : 0x00);
    if (n > 8) fits = fits && static_cast<bool>(p[7] & 0x80) == negative;
    if (!fits) error("an integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
    uint64_t v = negative ? ~uint64_t{0} : 0;  // sign-extends what is shorter than 8 bytes
    for (uint64_t i = std::min<uint64_t>(n, 8); i-- > 0;) v = (v << 8) | p[i];
    return static_cast<int64_t>(v);
  }

  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(PickleValue v) { stack_.push_back(std::move(v)); }
  PickleValue pop() {
    if (stack_.size() <= base()) error("stack underflow");
    PickleValue v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PickleValue& top() {
    if (stack_.size() <= base()) error("stack underflow");
    return stack_.back();
  }
  std::vector<PickleValue> pop_mark() {
    if (marks_.empty()) error("no MARK to pop to");
    const size_t b = marks_.back();
    marks_.pop_back();
    std::vector<PickleValue> items(std::make_move_iterator(stack_.begin() + b),
                                   std::make_move_iterator(stack_.end()));
    stack_.resize(b);
    return items;
  }

  // Every container made is registered, so that a failed or finished load can dismantle the
  // graph without recursion (hostile pickles may nest a million levels or build cycles).
  PickleValue remember(PickleValue v) {
    nodes_.push_back(v);
    return v;
  }
  PickleValue new_list(std::vector<PickleValue> items = {}) { return remember(PickleValue::list(std::move(items))); }
  PickleValue new_tuple(std::vector<PickleValue> items = {}) { return remember(PickleValue::tuple(std::move(items))); }
  PickleValue new_dict() { return remember(PickleValue::dict(std::make_shared<PickleDict>())); }
  PickleValue new_object(const PickleGlobal& cls, std::vector<PickleValue> args) {
    auto o = std::make_shared<PickleObject>();
    o->class_name = cls.full_name();
    o->args = new_tuple(std::move(args));
    return remember(PickleValue::object(std::move(o)));
  }

  std::vector<PickleValue>& list_items(PickleValue& v) {
    if (auto* l = std::get_if<std::shared_ptr<PickleValue::List>>(&v.v_)) return (*l)->items;
    error("expected a list to append to, found " + v.describe());
  }
  PickleDict& dict_of(PickleValue& v) {
    if (auto* d = std::get_if<std::shared_ptr<PickleDict>>(&v.v_)) return **d;
    error("expected a dict to set items in, found " + v.describe());
  }
  void set_item(PickleDict& d, PickleValue key, PickleValue value) {
    KeyCode code = KeyCode::Hashable;
    auto k = key_of(key, static_cast<size_t>(work_limit_ - work_), &code);
    if (code == KeyCode::TooLong)
      error("a dict key " + key.describe() + " expands to more than the " + std::to_string(work_limit_) +
            " values this pickle of " + std::to_string(size_) + " bytes may produce (a tuple shared within itself)");
    if (!k) error("a dict key must be hashable, found " + key.describe());
    charge(k->size());
    d.insert(std::move(*k), std::move(key), std::move(value));
  }
  void set_items(PickleDict& d, std::vector<PickleValue> kv) {
    if (kv.size() % 2 != 0) error("odd number of values for dict keys and values");
    for (size_t i = 0; i < kv.size(); i += 2) set_item(d, std::move(kv[i]), std::move(kv[i + 1]));
  }

  PickleValue resolve_global(const std::string& module, const std::string& name) {
    if (!find_allowed(module, name))
      error("refusing global '" + module + "." + name +
            "': only the classes and functions of torch checkpoints are accepted, nothing is executed");
    return PickleValue::global(module, name);
  }

  void copy_pairs(PickleDict& d, const PickleValue& from) {
    if (from.kind() == K::Dict) {
      charge(from.as_dict().items.size());
      for (const auto& [k, v] : from.as_dict().items) set_item(d, k, v);
      return;
    }
    if (from.kind() != K::List && from.kind() != K::Tuple) error("cannot build a dict from " + from.describe());
    const auto& pairs = from.kind() == K::List ? from.as_list() : from.as_tuple();
    charge(pairs.size());
    for (const auto& pair : pairs) {
      if ((pair.kind() != K::Tuple && pair.kind() != K::List) ||
          (pair.kind() == K::Tuple ? pair.as_tuple() : pair.as_list()).size() != 2)
        error("cannot build a dict from an item that is not a pair: " + pair.describe());
      const auto& kv = pair.kind() == K::Tuple ? pair.as_tuple() : pair.as_list();
      set_item(d, kv[0], kv[1]);
    }
  }

  std::vector<int64_t> int_sequence(const PickleValue& v, const char* what) {
    if (v.kind() != K::Tuple && v.kind() != K::List) error(std::string(what) + " must be a tuple, found " + v.describe());
    const auto& items = v.kind() == K::Tuple ? v.as_tuple() : v.as_list();
    if (items.size() > kMaxTensorDims) error(std::string(what) + " has " + std::to_string(items.size()) + " dimensions");
    std::vector<int64_t> out;
    for (const auto& item : items) {
      if (item.kind() != K::Int || item.as_int() < 0)
        error(std::string(what) + " must hold non-negative ints, found " + item.describe());
      out.push_back(item.as_int());
    }
    return out;
  }

  // torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
  // backward_hooks[, metadata]): a strided view of the storage, every index checked to lie in it.
  PickleValue rebuild_tensor(const std::vector<PickleValue>& args) {
    if (args.size() != 6 && args.size() != 7)
      error("_rebuild_tensor_v2 takes 6 or 7 arguments, found " + std::to_string(args.size()));
    if (args[0].kind() != K::Tensor) error("_rebuild_tensor_v2 needs a storage, found " + args[0].describe());
    const at::Tensor& storage = args[0].as_tensor();
    if (args[1].kind() != K::Int || args[1].as_int() < 0)
      error("the storage offset must be a non-negative int, found " + args[1].describe());
    const int64_t offset = args[1].as_int();
    const auto size = int_sequence(args[2], "the tensor size");
    const auto stride = int_sequence(args[3], "the tensor stride");
    if (size.size() != stride.size())
      error("tensor size has " + std::to_string(size.size()) + " dimensions but stride " +
            std::to_string(stride.size()));
    const int64_t available = storage.numel();
    bool empty = false;
    int64_t last = offset;
    for (size_t d = 0; d < size.size(); ++d) {
      if (size[d] == 0) empty = true;
      int64_t step = 0;
      if (size[d] > 0 && (__builtin_mul_overflow(size[d] - 1, stride[d], &step) ||
                          __builtin_add_overflow(last, step, &last)))
        error("tensor size and stride overflow 64 bits");
    }
    if (empty ? offset > available : last >= available)
      error("a tensor of size " + v_str(size) + ", stride " + v_str(stride) + " at offset " +
            std::to_string(offset) + " reaches past its storage of " + std::to_string(available) + " elements");
    return PickleValue::tensor(storage.as_strided(size, stride, offset));
  }

  static std::string v_str(const std::vector<int64_t>& v) {
    std::string s = "(";
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s + ")";
  }

  PickleValue call(const PickleValue& callable, std::vector<PickleValue> args) {
    if (callable.kind() != K::Global) error("cannot call " + callable.describe());
    const PickleGlobal& g = callable.as_global();
    const AllowedGlobal* allowed = find_allowed(g.module, g.name);
    const std::string name = g.full_name();
    if (!allowed) error("refusing to call '" + name + "'");
    auto arity = [&](size_t lo, size_t hi) {
      if (args.size() < lo || args.size() > hi)
        error(name + " called with " + std::to_string(args.size()) + " arguments");
    };
    switch (allowed->call) {
      case Callable::Dict: {
        arity(0, 1);
        PickleValue d = new_dict();
        if (!args.empty()) copy_pairs(dict_of(d), args[0]);
        return d;
      }
      case Callable::DefaultDict: {
        arity(0, 2);
        if (!args.empty() && args[0].kind() != K::Global && !args[0].is_none())
          error("defaultdict's factory must be a class, found " + args[0].describe());
        PickleValue d = new_dict();
        if (args.size() == 2) copy_pairs(dict_of(d), args[1]);
        return d;
      }
      case Callable::List: {
        arity(0, 1);
        if (args.empty()) return new_list();
        if (args[0].kind() == K::List) return new_list(charged_copy(args[0].as_list()));
        if (args[0].kind() == K::Tuple) return new_list(charged_copy(args[0].as_tuple()));
        error("cannot build a list from " + args[0].describe());
      }
      case Callable::Long: {
        arity(0, 1);
        if (args.empty()) return PickleValue::integer(0);
        const PickleValue& a = args[0];
        if (a.kind() == K::Int) return a;
        if (a.kind() == K::Bool) return PickleValue::integer(a.as_bool());
        if (a.kind() == K::Float && std::fabs(a.as_float()) < 9.2e18)
          return PickleValue::integer(static_cast<int64_t>(a.as_float()));
        error("cannot convert " + a.describe() + " to an int");
      }
      case Callable::RebuildTensor: return rebuild_tensor(args);
      case Callable::RebuildParameter:
        arity(3, 3);
        if (args[0].kind() != K::Tensor) error("_rebuild_parameter needs a tensor, found " + args[0].describe());
        return args[0];
      case Callable::Object: return new_object(g, std::move(args));
      case Callable::Inert: break;
    }
    error(name + " cannot be called");
  }

  void build(PickleValue& target, PickleValue state) {
    if (auto* o = std::get_if<std::shared_ptr<PickleObject>>(&target.v_)) {
      (*o)->state = std::move(state);
      return;
    }
    if (auto* d = std::get_if<std::shared_ptr<PickleDict>>(&target.v_)) {
      (*d)->attributes = std::move(state);
      return;
    }
    error("BUILD on a " + target.describe() + " is not supported");
  }

  void memo_put(uint64_t key) { memo_[key] = top(); }
  PickleValue memo_get(uint64_t key) {
    auto it = memo_.find(key);
    if (it == memo_.end()) error("memo entry " + std::to_string(key) + " was never stored");
    return it->second;
  }

  PickleValue loop() {
    while (true) {
      if (pos_ >= size_) error("truncated: the data ends without STOP");
      op_pos_ = pos_;
      op_ = data_[pos_++];
      switch (op_) {
        case 0x80: {
          const auto proto = static_cast<int>(read_le(1));
          if (proto > kMaxProtocol) error("unsupported pickle protocol " + std::to_string(proto));
          break;
        }
        case 0x95: {
          const uint64_t n = read_le(8);
          if (n > size_ - pos_) error("truncated: a frame of " + std::to_string(n) + " bytes runs past the end");
          break;
        }
        case '.': {
          if (!marks_.empty()) error("STOP with an unclosed MARK");
          if (stack_.size() != 1) error("STOP with " + std::to_string(stack_.size()) + " values on the stack, expected 1");
          PickleValue root = std::move(stack_.back());
          stack_.pop_back();
          return root;
        }
        case '(': marks_.push_back(stack_.size()); break;
        case '0':
          if (stack_.size() > base())
            stack_.pop_back();
          else
            pop_mark();
          break;
        case '1': pop_mark(); break;
        case '2': push(top()); break;
        case '}': push(new_dict()); break;
        case ']': push(new_list()); break;
        case ')': push(new_tuple()); break;
        case 'J': push(PickleValue::integer(static_cast<int32_t>(read_le(4)))); break;
        case 'K': push(PickleValue::integer(static_cast<int64_t>(read_le(1)))); break;
        case 'M': push(PickleValue::integer(static_cast<int64_t>(read_le(2)))); break;
        case 0x8a: push(PickleValue::integer(read_long(read_le(1)))); break;
        case 0x8b: {
          const auto n = static_cast<int32_t>(read_le(4));
          if (n < 0) error("negative LONG4 length");
          push(PickleValue::integer(read_long(static_cast<uint64_t>(n))));
          break;
        }
        case 'G': {
          uint64_t bits = 0;
          for (const uint8_t* p = take(8), *e = p + 8; p != e; ++p) bits = (bits << 8) | *p;
          double d;
          std::memcpy(&d, &bits, sizeof d);
          push(PickleValue::real(d));
          break;
        }
        case 0x8c: push(PickleValue::string(read_string(read_le(1)))); break;
        case 'X': push(PickleValue::string(read_string(read_le(4)))); break;
        case 0x8d: push(PickleValue::string(read_string(read_le(8)))); break;
        case 'U': push(PickleValue::string(read_string(read_le(1)))); break;
        case 'T': {
          const auto n = static_cast<int32_t>(read_le(4));
          if (n < 0) error("negative BINSTRING length");
          push(PickleValue::string(read_string(static_cast<uint64_t>(n))));
          break;
        }
        case 'C': push(PickleValue::bytes(read_string(read_le(1)))); break;
        case 'B': push(PickleValue::bytes(read_string(read_le(4)))); break;
        case 0x8e:
        case 0x96: push(PickleValue::bytes(read_string(read_le(8)))); break;
        case 'N': push(PickleValue()); break;
        case 0x88: push(PickleValue::boolean(true)); break;
        case 0x89: push(PickleValue::boolean(false)); break;
        case 0x85:
        case 0x86:
        case 0x87: {
          std::vector<PickleValue> items(op_ - 0x84);
          for (size_t i = items.size(); i-- > 0;) items[i] = pop();
          push(new_tuple(std::move(items)));
          break;
        }
        case 't': push(new_tuple(pop_mark())); break;
        case 'l': push(new_list(pop_mark())); break;
        case 'd': {
          auto kv = pop_mark();
          PickleValue d = new_dict();
          set_items(dict_of(d), std::move(kv));
          push(std::move(d));
          break;
        }
        case 'a': {
          PickleValue item = pop();
          list_items(top()).push_back(std::move(item));
          break;
        }
        case 'e': {
          auto items = pop_mark();
          auto& list = list_items(top());
          list.insert(list.end(), std::make_move_iterator(items.begin()), std::make_move_iterator(items.end()));
          break;
        }
        case 's': {
          PickleValue value = pop();
          PickleValue key = pop();
          set_item(dict_of(top()), std::move(key), std::move(value));
          break;
        }
        case 'u': {
          auto kv = pop_mark();
          set_items(dict_of(top()), std::move(kv));
          break;
        }
        case 'q': memo_put(read_le(1)); break;
        case 'r': memo_put(read_le(4)); break;
        case 0x94: memo_put(memo_.size()); break;
        case 'h': push(memo_get(read_le(1))); break;
        case 'j': push(memo_get(read_le(4))); break;
        case 'c': {
          std::string module = read_line();
          std::string name = read_line();
          push(resolve_global(module, name));
          break;
        }
        case 0x93: {
          PickleValue name = pop();
          PickleValue module = pop();
          if (name.kind() != K::String || module.kind() != K::String)
            error("STACK_GLOBAL needs two strings, found " + module.describe() + " and " + name.describe());
          push(resolve_global(module.as_string(), name.as_string()));
          break;
        }
        case 'R': {
          PickleValue args = pop();
          PickleValue callable = pop();
          if (args.kind() != K::Tuple) error("REDUCE needs an argument tuple, found " + args.describe());
          push(call(callable, charged_copy(args.as_tuple())));
          break;
        }
        case 0x81: {
          PickleValue args = pop();
          PickleValue cls = pop();
          if (args.kind() != K::Tuple) error("NEWOBJ needs an argument tuple, found " + args.describe());
          push(call(cls, charged_copy(args.as_tuple())));
          break;
        }
        case 0x92: {
          PickleValue kwargs = pop();
          PickleValue args = pop();
          PickleValue cls = pop();
          if (args.kind() != K::Tuple || kwargs.kind() != K::Dict || !kwargs.as_dict().items.empty())
            error("NEWOBJ_EX is supported only with an argument tuple and no keyword arguments");
          push(call(cls, charged_copy(args.as_tuple())));
          break;
        }
        case 'b': {
          PickleValue state = pop();
          build(top(), std::move(state));
          break;
        }
        case 'Q': {
          PickleValue pid = pop();
          if (!options_.persistent_load) error("a persistent id appears but nothing resolves persistent ids here");
          push(options_.persistent_load(pid));
          break;
        }
        default: {
          const char* name = opcode_name(op_);
          error(name ? std::string("opcode ") + name + " is not supported (not written by torch.save)"
                     : "unknown opcode (corrupt data or not a pickle)");
        }
      }
    }
  }

  // The slots of a container that may hold further containers; keys are flagged because a key
  // cannot be cut out of a dict the way a value can.
  struct Slot {
    PickleValue* value;
    bool is_key;
  };
  static const void* node_id(const PickleValue& v) {
    switch (v.kind()) {
      case K::List: return std::get<std::shared_ptr<PickleValue::List>>(v.v_).get();
      case K::Tuple: return std::get<std::shared_ptr<PickleValue::Tuple>>(v.v_).get();
      case K::Dict: return std::get<std::shared_ptr<PickleDict>>(v.v_).get();
      case K::Object: return std::get<std::shared_ptr<PickleObject>>(v.v_).get();
      default: return nullptr;
    }
  }
  static std::vector<Slot> slots(PickleValue& v) {
    std::vector<Slot> out;
    switch (v.kind()) {
      case K::List:
        for (auto& item : std::get<std::shared_ptr<PickleValue::List>>(v.v_)->items) out.push_back({&item, false});
        break;
      case K::Tuple:
        for (auto& item : std::get<std::shared_ptr<PickleValue::Tuple>>(v.v_)->items) out.push_back({&item, false});
        break;
      case K::Dict: {
        auto& d = *std::get<std::shared_ptr<PickleDict>>(v.v_);
        for (auto& [k, val] : d.items) {
          out.push_back({&k, true});
          out.push_back({&val, false});
        }
        out.push_back({&d.attributes, false});
        break;
      }
      case K::Object: {
        auto& o = *std::get<std::shared_ptr<PickleObject>>(v.v_);
        out.push_back({&o.args, false});
        out.push_back({&o.state, false});
        break;
      }
      default: break;
    }
    return out;
  }
  static void clear_node(PickleValue& v) {
    switch (v.kind()) {
      case K::List: std::get<std::shared_ptr<PickleValue::List>>(v.v_)->items.clear(); break;
      case K::Tuple: std::get<std::shared_ptr<PickleValue::Tuple>>(v.v_)->items.clear(); break;
      case K::Dict: {
        auto& d = *std::get<std::shared_ptr<PickleDict>>(v.v_);
        d.items.clear();
        d.index_.clear();
        d.attributes = PickleValue();
        break;
      }
      case K::Object: {
        auto& o = *std::get<std::shared_ptr<PickleObject>>(v.v_);
        o.args = PickleValue();
        o.state = PickleValue();
        break;
      }
      default: break;
    }
  }

  // Cuts references back to an enclosing container (turning them into None), checks the
  // nesting depth, and empties every container the root does not reach.
  void finish(PickleValue& root) {
    struct Frame {
      const void* id;
      std::vector<Slot> slots;
      size_t next = 0;
      size_t height = 1;
    };
    std::unordered_map<const void*, size_t> height;  // finished nodes
    std::unordered_set<const void*> on_path;
    std::vector<Frame> path;
    auto enter = [&](PickleValue& v) {
      if (path.size() >= kMaxDepth) error("values are nested more than " + std::to_string(kMaxDepth) + " levels deep");
      on_path.insert(node_id(v));
      path.push_back(Frame{node_id(v), slots(v)});
    };
    if (node_id(root)) enter(root);
    while (!path.empty()) {
      Frame& f = path.back();
      if (f.next < f.slots.size()) {
        Slot s = f.slots[f.next++];
        const void* id = node_id(*s.value);
        if (!id) continue;
        if (on_path.count(id)) {
          if (s.is_key) error("a dict key refers back to a container that holds it");
          *s.value = PickleValue();
          continue;
        }
        auto done = height.find(id);
        if (done != height.end()) {
          f.height = std::max(f.height, done->second + 1);
          continue;
        }
        enter(*s.value);
        continue;
      }
      const size_t h = f.height;
      if (h > kMaxDepth) error("values are nested more than " + std::to_string(kMaxDepth) + " levels deep");
      height.emplace(f.id, h);
      on_path.erase(f.id);
      path.pop_back();
      if (!path.empty()) path.back().height = std::max(path.back().height, h + 1);
    }
    for (auto& node : nodes_)
      if (!height.count(node_id(node))) clear_node(node);
    nodes_.clear();
  }

  void teardown() {
    stack_.clear();
    memo_.clear();
    for (auto& node : nodes_) clear_node(node);
    nodes_.clear();
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0, op_pos_ = 0;
  uint8_t op_ = 0;
  const UnpickleOptions& options_;
  std::vector<PickleValue> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValue> memo_;
  std::vector<PickleValue> nodes_;
  uint64_t work_ = 0;
  const uint64_t work_limit_;
};

PickleValue unpickle(const uint8_t* data, size_t size, const UnpickleOptions& options) {
  return Unpickler(data, size, options).run();
}

}  // namespace kosmosg::io
