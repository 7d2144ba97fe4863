#pragma once
// A restricted unpickler: it builds a tree of plain values from the pickles torch.save writes
// and never executes anything. Only a fixed list of globals is accepted (see unpickle()).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace kosmosg::io {

class PickleValue;
struct PickleDict;
struct PickleObject;

// A reference to a module-level name (a class such as typing.Any or torch.HalfStorage) used as a
// value rather than called.
struct PickleGlobal {
  std::string module, name;
  std::string full_name() const { return module + "." + name; }
};

// One node of an unpickled value tree. Containers and strings are shared: when the pickle refers
// to the same list, dict, object or string twice, both places hold the same node (and tensors the
// same storage), so copying a value never copies its contents.
class PickleValue {
 public:
  enum class Kind { None, Bool, Int, Float, String, Bytes, List, Tuple, Dict, Tensor, Global, Object };

  PickleValue() = default;  // None
  static PickleValue boolean(bool v);
  static PickleValue integer(int64_t v);
  static PickleValue real(double v);
  static PickleValue string(std::string v);
  static PickleValue bytes(std::string v);
  static PickleValue tensor(at::Tensor v);
  static PickleValue list(std::vector<PickleValue> items);
  static PickleValue tuple(std::vector<PickleValue> items);
  static PickleValue dict(std::shared_ptr<PickleDict> d);
  static PickleValue global(std::string module, std::string name);
  static PickleValue object(std::shared_ptr<PickleObject> o);

  Kind kind() const;
  // "none", "bool", "int", ..., or "object <class>" for objects.
  std::string describe() const;
  bool is_none() const { return kind() == Kind::None; }

  // Typed access; the wrong kind is an Error saying what was found. as_float accepts ints.
  bool as_bool() const;
  int64_t as_int() const;
  double as_float() const;
  const std::string& as_string() const;
  const std::string& as_bytes() const;
  const std::vector<PickleValue>& as_list() const;
  const std::vector<PickleValue>& as_tuple() const;
  const PickleDict& as_dict() const;
  const at::Tensor& as_tensor() const;
  const PickleGlobal& as_global() const;
  const PickleObject& as_object() const;

 private:
  friend class Unpickler;
  struct Bytes {
    std::string data;
  };
  struct List {
    std::vector<PickleValue> items;
  };
  struct Tuple {
    std::vector<PickleValue> items;
  };
  std::variant<std::monostate, bool, int64_t, double, std::shared_ptr<const std::string>,
               std::shared_ptr<const Bytes>, std::shared_ptr<List>,
               std::shared_ptr<Tuple>, std::shared_ptr<PickleDict>, at::Tensor, PickleGlobal,
               std::shared_ptr<PickleObject>>
      v_;
};

// A dict in insertion order whose keys may be any hashable value (str, int, float, bool, None,
// bytes, tuples of those, globals; objects and tensors by identity), as in Python.
struct PickleDict {
  std::vector<std::pair<PickleValue, PickleValue>> items;
  // Attributes set on the dict by BUILD (an OrderedDict state dict keeps `_metadata` there).
  PickleValue attributes;

  // The value under `key`, or nullptr.
  const PickleValue* find(const PickleValue& key) const;
  const PickleValue* find(const std::string& key) const;
  // The value under string `key`; a missing key is an Error listing what the dict holds.
  const PickleValue& at(const std::string& key) const;
  // Inserts or replaces (keeping the first position, as Python does); unhashable keys are an Error.
  void set(PickleValue key, PickleValue value);

 private:
  friend class Unpickler;
  void insert(std::string code, PickleValue key, PickleValue value);
  std::unordered_map<std::string, size_t> index_;  // key encoding → position in items
};

// An instance of an accepted class, kept inert: the call arguments and the state BUILD gave it.
struct PickleObject {
  std::string class_name;  // module.name, e.g. "omegaconf.dictconfig.DictConfig"
  PickleValue args;        // tuple
  PickleValue state;       // None until BUILD
};

// What the unpickler needs from its caller.
struct UnpickleOptions {
  std::string source = "<pickle>";  // names the pickle in errors (file and entry)
  // Resolves a persistent id (BINPERSID); without it a persistent id is an error.
  std::function<PickleValue(const PickleValue& pid)> persistent_load;
};

// Unpickles protocol 2–5 data as torch.save writes it. Accepted globals, and nothing else:
// collections.OrderedDict / defaultdict and __builtin__.dict / list / long (also their protocol-3
// spellings builtins.dict / list / int) build plain data; torch._utils._rebuild_tensor_v2 and
// _rebuild_parameter build tensors over storages given as 1-D tensors by persistent_load;
// torch.<Half|Float|BFloat16|Double|Long|Int|Byte|Bool|Char|Short>Storage and typing.Any are
// values; omegaconf's DictConfig, ListConfig, AnyNode, Metadata and ContainerMetadata become
// inert objects. Any other global, a malformed opcode, truncation or stack underflow is an Error
// naming the source. References back to an enclosing container (omegaconf's `_parent` links)
// become None so that the tree is acyclic; nesting deeper than 1000 is an Error, and so is a
// pickle whose shared values would be copied, or encoded as dict keys, into more than 16 values
// (or key bytes) per byte of input: time and memory stay proportional to the input's size.
PickleValue unpickle(const uint8_t* data, size_t size, const UnpickleOptions& options = {});

}  // namespace kosmosg::io
