#pragma once
// Checks shared by the Kosmos-G module configs (internal).
#include <string>

#include "kosmosg/io/config.h"

namespace kosmosg::models::detail {

// Fails unless `json[key]` is absent, null or equal to `supported` (the only value we implement).
void require_setting(const io::Json& json, const std::string& key, const io::Json& supported,
                     const std::string& what);

// Fails unless value > 0 (or >= 0 when `allow_zero`).
void require_positive(int64_t value, const std::string& key, const std::string& what,
                      bool allow_zero = false);

// Fails unless `heads` divides `width`.
void require_heads(int64_t width, int64_t heads, const std::string& what);

// Fails unless 0 <= p < 1.
void require_probability(double p, const std::string& key, const std::string& what);

}  // namespace kosmosg::models::detail
