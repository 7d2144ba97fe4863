#include "kosmosg/io/config.h"

#include "kosmosg/io/file.h"

namespace kosmosg::io {

Json read_json(const std::string& path) {
  return parse_json(read_file(path, "config", kMaxJsonFileBytes), path);
}

Json parse_json(const std::string& text, const std::string& what) {
  // Python writes non-finite floats as bare words; rewrite them outside strings into numbers
  // (±DBL_MAX; NaN into null) so the standard parser accepts the text. The same pass bounds the
  // nesting depth before the parser sees it.
  std::string clean;
  clean.reserve(text.size());
  bool in_string = false;
  size_t depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_string) {
      clean += ch;
      if (ch == '\\' && i + 1 < text.size()) clean += text[++i];
      else if (ch == '"') in_string = false;
      continue;
    }
    if (ch == '"') in_string = true;
    if (ch == '[' || ch == '{') {
      if (++depth > kMaxJsonDepth)
        fail("config", what + " is nested more than " + std::to_string(kMaxJsonDepth) + " levels deep");
    } else if ((ch == ']' || ch == '}') && depth > 0) {
      --depth;
    }
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

namespace {

// Appends the JSON text of `value` to `out`, stopping soon after `out` passes `limit` bytes, so
// that a huge value costs no more than the part shown.
void dump_bounded(const Json& value, std::string& out, size_t limit) {
  constexpr auto kReplace = nlohmann::json::error_handler_t::replace;
  if (value.is_string()) {
    const auto& s = value.get_ref<const std::string&>();
    out += Json(s.substr(0, limit + 1)).dump(-1, ' ', false, kReplace);
    return;
  }
  if (!value.is_structured()) {
    out += value.dump(-1, ' ', false, kReplace);
    return;
  }
  out += value.is_array() ? '[' : '{';
  bool first = true;
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (out.size() > limit) return;
    if (!first) out += ',';
    first = false;
    if (value.is_object()) out += Json(it.key()).dump(-1, ' ', false, kReplace) + ':';
    dump_bounded(*it, out, limit);
  }
  out += value.is_array() ? ']' : '}';
}

}  // namespace

std::string brief(const Json& value, size_t max_chars) {
  std::string text;
  dump_bounded(value, text, max_chars);
  if (text.size() <= max_chars) return text;
  size_t cut = max_chars;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // a whole UTF-8 character
  return text.substr(0, cut) + "…";
}

}  // namespace kosmosg::io
