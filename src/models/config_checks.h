#pragma once
// Checks shared by the Kosmos-G module configs (internal).
#include <c10/util/Exception.h>

#include <new>
#include <string>
#include <vector>

#include "kosmosg/io/config.h"

namespace kosmosg::models::detail {

// Fails unless `json[key]` is absent, null or equal to `supported` (the only value we implement).
void require_setting(const io::Json& json, const std::string& key, const io::Json& supported,
                     const std::string& what);

// The largest size (width, layer count, channel count, ...) a config may give: the real models
// stay below 10,000, and larger values only make module construction exhaust memory.
constexpr int64_t kMaxConfigSize = 1 << 16;

// Fails unless 0 < value <= max (or 0 <= value when `allow_zero`).
void require_positive(int64_t value, const std::string& key, const std::string& what,
                      bool allow_zero = false, int64_t max = kMaxConfigSize);

// Fails unless every one of `values` (the entries of `key`) is at most kMaxConfigSize.
void require_at_most_max(const std::vector<int64_t>& values, const std::string& key, const std::string& what);

// Builds a module from its config. Sizes within the bounds above may still need more memory than
// there is: the allocation failure becomes an Error naming the config instead of LibTorch's.
template <typename Module, typename Config>
Module build_module(const Config& config, const std::string& what) {
  try {
    return Module(config);
  } catch (const c10::Error& e) {
    fail(what, std::string("cannot build the model from this config: ") + e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    fail(what, "the model this config describes needs more memory than is available (are its sizes right?)");
  }
}

// Fails unless `heads` divides `width`.
void require_heads(int64_t width, int64_t heads, const std::string& what);

// Fails unless 0 <= p < 1.
void require_probability(double p, const std::string& key, const std::string& what);

}  // namespace kosmosg::models::detail
