#include "kosmosg/io/builtin_configs.h"

#include <map>

namespace kosmosg::io {
namespace detail {
const std::map<std::string, const char*>& builtin_config_texts();
}

Json builtin_config(const std::string& name) {
  const auto& texts = detail::builtin_config_texts();
  auto it = texts.find(name);
  if (it == texts.end()) {
    std::string known;
    for (const auto& [n, text] : texts) known += (known.empty() ? "" : ", ") + n;
    fail("config", "no built-in config '" + name + "' (known: " + known + ")");
  }
  return parse_json(it->second, "built-in config " + name);
}

std::vector<std::string> builtin_config_names() {
  std::vector<std::string> names;
  for (const auto& [n, text] : detail::builtin_config_texts()) names.push_back(n);
  return names;
}

}  // namespace kosmosg::io
