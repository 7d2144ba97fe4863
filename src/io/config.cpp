#include "kosmosg/io/config.h"

#include <fstream>
#include <sstream>

namespace kosmosg::io {

Json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("config", "cannot read " + path + " (missing or unreadable)");
  std::stringstream text;
  text << in.rdbuf();
  return parse_json(text.str(), path);
}

Json parse_json(const std::string& text, const std::string& what) {
  // Python writes non-finite floats as bare words; rewrite them outside strings into numbers
  // (±DBL_MAX; NaN into null) so the standard parser accepts the text.
  std::string clean;
  clean.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      clean += ch;
      if (ch == '\\' && i + 1 < text.size()) clean += text[++i];
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') in_string = true;
    if (text.compare(i, 8, "Infinity") == 0) {
      clean += "1.7976931348623157e308";
      i += 7;
    } else if (text.compare(i, 3, "NaN") == 0) {
      clean += "null";
      i += 2;
    } else {
      clean += ch;
    }
  }
  try {
    return Json::parse(clean);
  } catch (const nlohmann::json::exception& e) {
    fail("config", what + " is not valid JSON: " + e.what());
  }
}

}  // namespace kosmosg::io
