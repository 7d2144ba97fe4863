#pragma once
// JSON configs in the upstream spellings, with the upstream defaults for omitted keys.
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "kosmosg/error.h"

namespace kosmosg::io {

using Json = nlohmann::json;

// Deepest nesting of arrays and objects accepted in JSON text: real configs nest a few levels,
// and deeper values would make nlohmann's recursive copy, compare and dump overflow the stack.
constexpr size_t kMaxJsonDepth = 256;
// Largest JSON file read_json reads (vocabularies are a few MiB).
constexpr uint64_t kMaxJsonFileBytes = 64ull << 20;

// Parses a JSON file; the error names the file and the parse problem. Accepts the bare
// NaN / Infinity / -Infinity that Python's json module writes (as null and ±DBL_MAX, since
// JSON numbers cannot be infinite). Only regular files up to kMaxJsonFileBytes nested at most
// kMaxJsonDepth deep are read.
Json read_json(const std::string& path);

// Parses JSON text like read_json; `what` names its origin in errors.
Json parse_json(const std::string& text, const std::string& what);

// The JSON text of `value` for an error message, cut after `max_chars` characters ("…" marks the
// cut) so that a huge value never floods the message.
std::string brief(const Json& value, size_t max_chars = 80);

namespace detail {

// `value` as the integer type T when it holds a whole number T can represent (floats such as 64.0
// included); false otherwise, and never a conversion out of range.
template <typename T>
bool to_integer(const Json& value, T& out) {
  if (value.is_number_integer() && !value.is_number_unsigned()) {
    const auto v = value.get<int64_t>();
    if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
        (v > 0 && static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max())))
      return false;
    out = static_cast<T>(v);
    return true;
  }
  if (value.is_number_unsigned()) {
    const auto v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) return false;
    out = static_cast<T>(v);
    return true;
  }
  if (value.is_number_float()) {
    // Both bounds are powers of two (or zero), exact as doubles; the upper one is exclusive.
    const double d = value.get<double>();
    const double lo = static_cast<double>(std::numeric_limits<T>::min());
    const double hi = 2.0 * static_cast<double>(std::numeric_limits<T>::max() / 2 + 1);
    if (!std::isfinite(d) || d != std::trunc(d) || d < lo || d >= hi) return false;
    out = static_cast<T>(d);
    return true;
  }
  return false;
}

template <typename T>
struct is_integer_vector : std::false_type {};
template <typename V, typename A>
struct is_integer_vector<std::vector<V, A>>
    : std::bool_constant<std::is_integral_v<V> && !std::is_same_v<V, bool>> {};

// Converts a config value to T: integers (and vectors of them) are range-checked, everything
// else goes through nlohmann's conversions. False when the value does not fit T.
template <typename T>
bool convert(const Json& value, T& out) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    return to_integer(value, out);
  } else if constexpr (is_integer_vector<T>::value) {
    if (!value.is_array()) return false;
    out.clear();
    for (const auto& item : value) {
      typename T::value_type v{};
      if (!to_integer(item, v)) return false;
      out.push_back(v);
    }
    return true;
  } else {
    try {
      out = value.get<T>();
      return true;
    } catch (const nlohmann::json::exception&) {
      return false;
    }
  }
}

}  // namespace detail

// `config[key]` as T, or `fallback` when the key is missing or null. A value of the wrong type,
// or a number out of T's range, is an error naming `what` (the config's file or class) and the key.
template <typename T>
T config_value(const Json& config, const std::string& key, const T& fallback,
               const std::string& what = "config") {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  T out{};
  if (!detail::convert(*it, out)) {
    const bool integral = std::is_integral_v<T> && !std::is_same_v<T, bool>;
    fail(what, "key '" + key + "' has the value " + brief(*it) +
                   (integral && it->is_number() ? ", which is not an integer in range" : " of the wrong type"));
  }
  return out;
}

// Like config_value, but the key must be present.
template <typename T>
T config_require(const Json& config, const std::string& key, const std::string& what = "config") {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) fail(what, "required key '" + key + "' is missing");
  return config_value<T>(config, key, T{}, what);
}

}  // namespace kosmosg::io
