#include "models/config_checks.h"

namespace kosmosg::models::detail {

void require_setting(const io::Json& json, const std::string& key, const io::Json& supported,
                     const std::string& what) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null() || *it == supported) return;
  fail(what, "key '" + key + "' is " + io::brief(*it) + ", but only " + supported.dump() +
                 " is supported (the Kosmos-G setting)");
}

void require_positive(int64_t value, const std::string& key, const std::string& what,
                      bool allow_zero, int64_t max) {
  if ((value > 0 || (allow_zero && value == 0)) && value <= max) return;
  fail(what, "key '" + key + "' is " + std::to_string(value) + ", expected a " +
                 (allow_zero ? "non-negative" : "positive") + " number of at most " + std::to_string(max));
}

void require_at_most_max(const std::vector<int64_t>& values, const std::string& key, const std::string& what) {
  for (int64_t v : values)
    if (v > kMaxConfigSize)
      fail(what, "key '" + key + "' holds " + std::to_string(v) + ", more than the " +
                     std::to_string(kMaxConfigSize) + " this tool accepts");
}

void require_heads(int64_t width, int64_t heads, const std::string& what) {
  if (heads > 0 && width % heads == 0) return;
  fail(what, "width " + std::to_string(width) + " cannot be split into " + std::to_string(heads) +
                 " attention heads");
}

void require_probability(double p, const std::string& key, const std::string& what) {
  if (p >= 0 && p < 1) return;
  fail(what, "key '" + key + "' is " + std::to_string(p) + ", expected a probability in [0, 1)");
}

}  // namespace kosmosg::models::detail
