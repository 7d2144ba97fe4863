#pragma once
// JSON configs in the upstream spellings, with the upstream defaults for omitted keys.
#include <nlohmann/json.hpp>

#include <string>

#include "kosmosg/error.h"

namespace kosmosg::io {

using Json = nlohmann::json;

// Parses a JSON file; the error names the file and the parse problem. Accepts the bare
// NaN / Infinity / -Infinity that Python's json module writes (as null and ±DBL_MAX, since
// JSON numbers cannot be infinite).
Json read_json(const std::string& path);

// Parses JSON text like read_json; `what` names its origin in errors.
Json parse_json(const std::string& text, const std::string& what);

// `config[key]` as T, or `fallback` when the key is missing or null. A value of the wrong type
// is an error naming `what` (the config's file or class) and the key.
template <typename T>
T config_value(const Json& config, const std::string& key, const T& fallback,
               const std::string& what = "config") {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(what, "key '" + key + "' has the value " + it->dump() + " of the wrong type");
  }
}

// Like config_value, but the key must be present.
template <typename T>
T config_require(const Json& config, const std::string& key, const std::string& what = "config") {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) fail(what, "required key '" + key + "' is missing");
  return config_value<T>(config, key, T{}, what);
}

}  // namespace kosmosg::io
