#include "text/unicode.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kosmosg::text::unicode {
namespace {

struct Range {
  char32_t first, last;
};
struct LowerRun {
  char32_t first, last;
  int32_t delta;
  uint32_t step;
};
struct MultiLower {
  char32_t cp;
  const char* utf8;
};
struct CccRange {
  char32_t first, last;
  uint8_t ccc;
};
struct Decomposition {
  char32_t cp, a, b;  // b == 0: a singleton
  int composes;       // a + b recompose to cp under NFC
};
struct Charmap {
  const char* name;
  bool sloppy;
  char32_t chars[129];  // bytes 0x80..0xFF, then 0x1A
};
struct Replacement {
  char32_t cp;
  const char* utf8;
};
struct Entity {
  const char* name;
  const char* utf8;
};

#include "text/unicode_tables.inc"

template <size_t N>
bool in(const Range (&table)[N], char32_t c) {
  auto it = std::upper_bound(std::begin(table), std::end(table), c,
                             [](char32_t v, const Range& r) { return v < r.first; });
  return it != std::begin(table) && c <= std::prev(it)->last;
}

constexpr char32_t kReplacementChar = 0xFFFD;

// ---- UTF-8 ---------------------------------------------------------------------------------

// Python's strict UTF-8 decoder; `variants` adds ftfy's "utf-8-variants" (CESU-8 surrogate
// pairs and Java's C0 80 for U+0000). nullopt where Python would raise UnicodeDecodeError.
std::optional<std::u32string> decode_utf8_strict(const std::string& s, bool variants) {
  std::u32string out;
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  auto cont = [&](size_t i) { return i < n && (b[i] & 0xC0) == 0x80; };
  for (size_t i = 0; i < n;) {
    const unsigned char c = b[i];
    if (c < 0x80) {
      out.push_back(c);
      ++i;
    } else if (variants && c == 0xC0 && i + 1 < n && b[i + 1] == 0x80) {
      out.push_back(0);
      i += 2;
    } else if (variants && c == 0xED && i + 5 < n && b[i + 1] >= 0xA0 && b[i + 1] <= 0xAF &&
               cont(i + 2) && b[i + 3] == 0xED && b[i + 4] >= 0xB0 && b[i + 4] <= 0xBF &&
               cont(i + 5)) {
      const char32_t hi = 0xD000 | ((b[i + 1] & 0x3F) << 6) | (b[i + 2] & 0x3F);
      const char32_t lo = 0xD000 | ((b[i + 4] & 0x3F) << 6) | (b[i + 5] & 0x3F);
      out.push_back(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00));
      i += 6;
    } else if (c >= 0xC2 && c <= 0xDF && cont(i + 1)) {
      out.push_back(((c & 0x1F) << 6) | (b[i + 1] & 0x3F));
      i += 2;
    } else if (c >= 0xE0 && c <= 0xEF && cont(i + 1) && cont(i + 2)) {
      const char32_t cp = ((c & 0x0F) << 12) | ((b[i + 1] & 0x3F) << 6) | (b[i + 2] & 0x3F);
      if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return std::nullopt;
      out.push_back(cp);
      i += 3;
    } else if (c >= 0xF0 && c <= 0xF4 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      const char32_t cp = ((c & 0x07) << 18) | ((b[i + 1] & 0x3F) << 12) |
                          ((b[i + 2] & 0x3F) << 6) | (b[i + 3] & 0x3F);
      if (cp < 0x10000 || cp > 0x10FFFF) return std::nullopt;
      out.push_back(cp);
      i += 4;
    } else {
      return std::nullopt;
    }
  }
  return out;
}

std::u32string from_utf8_literal(const char* s) { return decode_utf8(s); }

// ---- character sets of ftfy's heuristics -----------------------------------------------------

// A set of code points given as single characters and inclusive ranges.
class CharSet {
 public:
  CharSet(std::u32string_view singles, std::initializer_list<Range> ranges = {}) {
    for (char32_t c : singles) ranges_.push_back({c, c});
    ranges_.insert(ranges_.end(), ranges.begin(), ranges.end());
  }
  CharSet operator|(const CharSet& o) const {
    CharSet s = *this;
    s.ranges_.insert(s.ranges_.end(), o.ranges_.begin(), o.ranges_.end());
    return s;
  }
  bool operator()(char32_t c) const {
    for (const auto& r : ranges_)
      if (c >= r.first && c <= r.last) return true;
    return false;
  }

 private:
  std::vector<Range> ranges_;
};

// ftfy's MOJIBAKE_CATEGORIES: the characters that UTF-8 mojibake is made of, by how they behave.
struct Categories {
  CharSet common{U"\u00A0\u00AD\u00B7\u00B4\u2013\u2014\u2015\u2026\u2019"};
  CharSet c1{U"", {{0x80, 0x9F}}};
  CharSet bad{U"\u00A6\u00A4\u00A8\u00AC\u00AF\u00B6\u00A7\u00B8\u0192\u02C6\u02C7\u02D8\u02DB"
              U"\u02DC\u2020\u2021\u2030\u2310\u25CA\uFFFD\u00AA\u00BA"};
  CharSet currency{U"\u00A2\u00A3\u00A5\u20A7\u20AC"};
  CharSet start_punct{U"\u00A1\u00AB\u00BF\u00A9\u0384\u0385\u2018\u201A\u201C\u201E\u2022"
                      U"\u2039\uF8FF"};
  CharSet end_punct{U"\u00AE\u00BB\u02DD\u201D\u203A\u2122"};
  CharSet numeric{U"\u00B2\u00B3\u00B9\u00B1\u00BC\u00BD\u00BE\u00D7\u00B5\u00F7\u2044\u2202"
                  U"\u2206\u220F\u2211\u221A\u221E\u2229\u222B\u2248\u2260\u2261\u2264\u2265\u2116"};
  CharSet kaomoji{U"\u0150\u00B0", {{0xD2, 0xD6}, {0xD9, 0xDC}, {0xF2, 0xF6}, {0xF8, 0xFC}}};
  CharSet upper_accented{U"\u00D8\u00DC\u00DD\u0102\u0104\u0106\u010C\u010E\u0110\u0118\u011A"
                         U"\u011E\u0130\u0139\u013D\u0141\u0143\u0147\u0152\u0158\u015A\u015E"
                         U"\u0160\u0162\u0164\u016E\u0170\u0178\u0179\u017B\u017D\u0490",
                         {{0xC0, 0xD1}}};
  CharSet lower_accented{U"\u00DF\u0103\u0105\u0107\u010D\u010F\u0111\u0119\u011B\u011F\u013A"
                         U"\u013E\u0142\u0153\u0155\u015B\u015F\u0161\u0165\u00FC\u017A\u017C"
                         U"\u017E\u0491\uFB01\uFB02",
                         {{0xE0, 0xF1}}};
  CharSet upper_common{U"\u00DE\u0386\u0388\u0389\u038A\u038C\u038E\u038F\u03AA\u03AB",
                       {{0x391, 0x3A9}, {0x401, 0x42F}}};
  CharSet lower_common{U"\u03AC\u03AD\u03AE\u03AF\u03B0", {{0x3B1, 0x3C9}, {0x430, 0x45F}}};
  CharSet box{U"\u2502\u250C\u2510\u2518\u251C\u2524\u252C\u253C\u2580\u2584\u2588\u258C\u2590"
              U"\u2591\u2592\u2593",
              {{0x2550, 0x256C}}};
  CharSet ascii_letter{U"", {{'a', 'z'}, {'A', 'Z'}}};
  CharSet ascii_lower{U"", {{'a', 'z'}}};

  // UTF8_CLUES: letters that Latin-1-like charsets decode UTF-8 lead/continuation bytes to.
  CharSet first_of_2{U"\u0102\u0106\u010C\u010E\u0110\u0118\u011A\u011E\u0130\u0139\u0143\u0147"
                     U"\u0150\u0158\u015E\u0162\u016E\u0170",
                     {{0xC2, 0xDF}, {0x392, 0x3A1}, {0x3A3, 0x3AF}, {0x412, 0x42F}}};
  CharSet first_of_3{U"\u0103\u0107\u010D\u010F\u0119\u011B\u013A\u0155",
                     {{0xE0, 0xEF}, {0x3B0, 0x3BF}, {0x430, 0x43F}}};
  CharSet first_of_4{U"\u00F0\u00F3\u0111\u011F\u03C0\u03C3\u0440\u0443"};
  CharSet continuation_strict{
      U"\u0104\u0105\u013D\u013E\u0141\u0142\u0152\u0153\u015A\u015B\u015E\u015F\u0160\u0161"
      U"\u0164\u0165\u0178\u0179\u017A\u017B\u017C\u017D\u017E\u0192\u02C6\u02C7\u02D8\u02DB"
      U"\u02DC\u02DD\u0384\u0385\u0386\u0388\u0389\u038A\u038C\u038E\u038F\u040E\u040F\u045E"
      U"\u045F\u0490\u0491\u2020\u2021\u2022\u2030\u2039\u203A\u20AC\u2116\u2122",
      {{0x80, 0xBF}, {0x401, 0x40C}, {0x451, 0x45C}}};
  CharSet continuation =
      continuation_strict | CharSet{U"\u2013\u2014\u2015\u2018\u2019\u201A\u201C\u201D\u201E\u2026 "};
};

const Categories& cat() {
  static const Categories c;
  return c;
}

bool is_py_word(char32_t c) { return c == '_' || is_letter(c) || is_number(c); }

// One alternative of ftfy's BADNESS_RE: a fixed sequence of character tests, where the one
// marked optional may be skipped (`\s?`) and `anchored` ties the match to the start (`^`).
struct Pattern {
  std::vector<std::function<bool(char32_t)>> items;
  int optional = -1;
  bool anchored = false;
};

bool match_at(const Pattern& p, const std::u32string& s, size_t pos, size_t item) {
  if (item == p.items.size()) return true;
  if (static_cast<int>(item) == p.optional && match_at(p, s, pos, item + 1)) return true;
  return pos < s.size() && p.items[item](s[pos]) && match_at(p, s, pos + 1, item + 1);
}

std::vector<Pattern> build_badness() {
  const auto& k = cat();
  using F = std::function<bool(char32_t)>;
  auto set = [](const CharSet& s) -> F { return s; };
  auto is = [](char32_t c) -> F { return [c](char32_t x) { return x == c; }; };
  auto chars = [](std::u32string_view v) -> F { return CharSet(v); };
  const CharSet bad_ctx = k.bad | k.lower_accented | k.upper_accented | k.box | k.start_punct |
                          k.end_punct | k.currency | k.numeric;
  const CharSet accented_ctx = k.lower_accented | k.upper_accented | k.box | k.start_punct |
                               k.end_punct | k.currency | k.numeric;
  const CharSet arabic_next = k.common | k.currency | k.bad | k.numeric | k.start_punct |
                              CharSet(U"\u0178\u0160\u00AE\u00B0\u00B5\u00BB");
  const CharSet cyrillic_mid = k.c1 | k.bad | k.start_punct | k.end_punct | k.currency |
                               CharSet(U"\u00B0\u00B5");
  const CharSet greek_mid = k.c1 | k.bad | k.start_punct | k.end_punct | k.currency |
                            CharSet(U"\u00B0");
  const F any_but_newline = [](char32_t c) { return c != '\n'; };
  const F py_space = [](char32_t c) { return is_py_space(c); };
  std::vector<Pattern> p = {
      {{set(k.c1)}},
      {{set(bad_ctx), set(k.bad)}},
      {{set(k.ascii_letter), set(k.lower_common | k.upper_common), set(k.bad)}},
      {{set(k.bad), set(accented_ctx)}},
      {{set(k.lower_accented | k.lower_common | k.box | k.end_punct | k.currency | k.numeric),
        set(k.upper_accented)}},
      {{set(k.box | k.end_punct | k.currency | k.numeric), set(k.lower_accented)}},
      {{set(k.lower_accented | k.box | k.end_punct), set(k.currency)}},
      {{py_space, set(k.upper_accented), set(k.currency)}},
      {{set(k.upper_accented | k.box), set(k.numeric)}},
      {{set(k.lower_accented | k.upper_accented | k.box | k.currency | k.end_punct),
        set(k.start_punct), set(k.numeric)}},
      {{set(k.lower_accented | k.upper_accented | k.currency | k.numeric | k.box),
        set(k.end_punct), set(k.start_punct)}},
      {{set(k.currency | k.numeric | k.box), set(k.start_punct)}},
      {{set(k.ascii_lower), set(k.upper_accented), set(k.start_punct | k.currency)}},
      {{set(k.box), set(k.kaomoji)}},
      {{set(k.lower_accented | k.upper_accented | k.currency | k.numeric | k.start_punct |
            k.end_punct),
        set(k.box)}},
      {{set(k.box), set(k.end_punct)}},
      {{set(k.lower_accented | k.upper_accented), set(k.end_punct), is_py_word}},
      {{chars(U"\u0152\u0153"), [](char32_t c) { return !cat().ascii_letter(c); }}},
      {{chars(U"\u00C2\u00C3\u00CE\u00D0"),
        set(CharSet(U"\u20AC\u0160\u0161\u00A2\u00A3\u0178\u017E\u00A0\u00AD\u00AE\u00A9\u00B0"
                    U"\u00B7\u00BB\u2013\u2014\u00B4") |
            k.start_punct | k.end_punct)}},
      {{is(0xD7), chars(U"\u00B2\u00B3")}},
      {{chars(U"\u00D8\u00D9"), set(arabic_next), chars(U"\u00D8\u00D9"), set(arabic_next)}},
      {{is(0xE0), chars(U"\u00B2\u00B5\u00B9\u00BC\u00BD\u00BE")}},
      {{is(0x221A),
        chars(U"\u00B1\u2202\u2020\u2260\u00AE\u2122\u00B4\u2264\u2265\u00A5\u00B5\u00F8")}},
      {{is(0x2248), chars(U"\u00B0\u00A2")}},
      {{is(0x201A), is(0xC4),
        chars(U"\u00EC\u00EE\u00EF\u00F2\u00F4\u00FA\u00F9\u00FB\u2020\u00B0\u00A2\u03C0")}},
      {{is(0x201A), chars(U"\u00E2\u00F3"), chars(U"\u00E0\u00E4\u00B0\u00EA")}},
      {{is(0x432), is(0x402)}},
      {{chars(U"\u0412\u0413\u0420\u0421"), set(cyrillic_mid), chars(U"\u0412\u0413\u0420\u0421")}},
      {{is(0x413), is(0x45E), is(0x412), is(0x402), is(0x412), any_but_newline,
        set(k.ascii_letter | CharSet(U" "))}},
      {{is(0xC3), chars(U"\u00A0\u00A1")}},
      {{set(k.ascii_lower), py_space, chars(U"\u00C3\u00C2"), is(' ')}, 1},
      {{chars(U"\u00C3\u00C2"), is(' ')}, -1, true},
      {{set(k.ascii_lower | CharSet(U".,?!") | k.end_punct), is(0xC2),
        set(CharSet(U" ") | k.start_punct | k.end_punct)}},
      {{is(0x3B2), is(0x20AC), chars(U"\u2122\u00A0\u0386\u00AD\u00AE\u00B0")}},
      {{chars(U"\u0392\u0393\u039E\u039F"), set(greek_mid), chars(U"\u0392\u0393\u039E\u039F")}},
  };
  return p;
}

// ---- single-byte charsets ---------------------------------------------------------------------

const Charmap& charmap(std::string_view name) {
  for (const auto& m : kCharmaps)
    if (name == m.name) return m;
  throw std::logic_error("unknown charmap");
}

// Byte of `c` in `m`, if it has one (ASCII other than 0x1A maps to itself).
std::optional<unsigned char> encode_byte(const Charmap& m, char32_t c) {
  if (c < 0x80 && c != 0x1A) return static_cast<unsigned char>(c);
  for (int i = 0; i < 129; ++i)
    if (m.chars[i] == c) return static_cast<unsigned char>(i < 128 ? 0x80 + i : 0x1A);
  return std::nullopt;
}

std::optional<std::string> encode_charmap(const Charmap& m, const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    auto b = encode_byte(m, c);
    if (!b) return std::nullopt;
    out.push_back(static_cast<char>(*b));
  }
  return out;
}

// ---- byte-level repairs of fix_encoding -------------------------------------------------------

// Length of an ALTERED_UTF8_RE match at i (0 if none): UTF-8 sequences whose 0xA0 byte became
// a space.
size_t altered_utf8_at(const std::string& s, size_t i) {
  auto b = [&](size_t j) -> int { return j < s.size() ? static_cast<unsigned char>(s[j]) : -1; };
  auto cont = [](int x) { return x >= 0x80 && x <= 0xBF; };
  auto cont_no_85_a0 = [](int x) {
    return (x >= 0x80 && x <= 0x84) || (x >= 0x86 && x <= 0x9F) || (x >= 0xA1 && x <= 0xBF);
  };
  const int c = b(i);
  if ((c == 0xC2 || c == 0xC3 || c == 0xC5 || c == 0xCE || c == 0xD0 || c == 0xD9) && b(i + 1) == ' ')
    return 2;
  if ((c == 0xE2 || c == 0xE3) && b(i + 1) == ' ' && cont_no_85_a0(b(i + 2))) return 3;
  if (c >= 0xE0 && c <= 0xE3 && cont_no_85_a0(b(i + 1)) && b(i + 2) == ' ') return 3;
  if (c == 0xF0) {
    if (b(i + 1) == ' ' && cont(b(i + 2)) && cont(b(i + 3))) return 4;
    if (cont(b(i + 1)) && b(i + 2) == ' ' && cont(b(i + 3))) return 4;
    if (cont(b(i + 1)) && cont(b(i + 2)) && b(i + 3) == ' ') return 4;
  }
  return 0;
}

bool has_altered_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size(); ++i)
    if (altered_utf8_at(s, i)) return true;
  return false;
}

std::string restore_byte_a0(const std::string& in) {
  // "à" followed by a word: its 0xA0 byte was turned into the space before the word.
  std::string s;
  for (size_t i = 0; i < in.size(); ++i) {
    s.push_back(in[i]);
    if (static_cast<unsigned char>(in[i]) == 0xC3 && i + 1 < in.size() && in[i + 1] == ' ') {
      const std::string_view rest(in.data() + i + 2, in.size() - i - 2);
      bool keep = false;
      for (std::string_view w : {" ", "quele", "quela", "quilo", "s "}) keep |= rest.substr(0, w.size()) == w;
      if (!keep) s.push_back(static_cast<char>(0xA0));
    }
  }
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (size_t n = altered_utf8_at(s, i)) {
      for (size_t j = i; j < i + n; ++j) out.push_back(s[j] == ' ' ? static_cast<char>(0xA0) : s[j]);
      i += n;
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

// Length of a LOSSY_UTF8_RE match at i: UTF-8 sequences with bytes lost to 0x1A (U+FFFD in a
// sloppy charset) or '?'.
size_t lossy_utf8_at(const std::string& s, size_t i) {
  auto b = [&](size_t j) -> int { return j < s.size() ? static_cast<unsigned char>(s[j]) : -1; };
  auto lost = [](int x) { return x == 0x1A || x == '?'; };
  auto lost_or_cont = [](int x) { return x == 0x1A || x == '?' || (x >= 0x80 && x <= 0xBF); };
  auto sub_or_cont = [](int x) { return x == 0x1A || (x >= 0x80 && x <= 0xBF); };
  const int c = b(i);
  if (c >= 0xC2 && c <= 0xDF && b(i + 1) == 0x1A) return 2;
  if ((c == 0xC2 || c == 0xC3) && b(i + 1) == '?') return 2;
  if (c == 0xED && b(i + 1) >= 0xA0 && b(i + 1) <= 0xAF && b(i + 3) == 0xED && b(i + 4) >= 0xB0 &&
      b(i + 4) <= 0xBF) {
    if (lost(b(i + 2)) && lost_or_cont(b(i + 5))) return 6;
    if (lost_or_cont(b(i + 2)) && lost(b(i + 5))) return 6;
  }
  if (c >= 0xE0 && c <= 0xEF) {
    if (lost(b(i + 1)) && sub_or_cont(b(i + 2))) return 3;
    if (sub_or_cont(b(i + 1)) && lost(b(i + 2))) return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    for (int q = 1; q <= 3; ++q) {
      bool ok = true;
      for (int j = 1; j <= 3; ++j) ok &= j == q ? lost(b(i + j)) : sub_or_cont(b(i + j));
      if (ok) return 4;
    }
  }
  return c == 0x1A ? 1 : 0;
}

std::string replace_lossy_sequences(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (size_t n = lossy_utf8_at(s, i)) {
      out += "\xEF\xBF\xBD";
      i += n;
    } else {
      out.push_back(s[i++]);
    }
  }
  return out;
}

// ---- fix_encoding -----------------------------------------------------------------------------

constexpr const char* kEncodings[] = {"latin-1",        "sloppy-windows-1252", "sloppy-windows-1251",
                                      "sloppy-windows-1250", "sloppy-windows-1253",
                                      "sloppy-windows-1254", "iso-8859-2", "macroman", "cp437"};

bool is_ascii(const std::u32string& s) {
  return std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x80; });
}

bool possible_encoding(const Charmap& m, const std::u32string& s) {
  for (char32_t c : s) {
    if (c < 0x80 && c != 0x1A) continue;
    if (std::find(std::begin(m.chars), std::end(m.chars), c) == std::end(m.chars)) return false;
  }
  return true;
}

std::u32string fix_encoding(const std::u32string& text);

// Length of a UTF8_DETECTOR_RE match at i: runs of what looks like UTF-8 read as a single-byte
// charset, not preceded by a character that is only ever such a continuation.
size_t utf8_detector_at(const std::u32string& s, size_t i) {
  const auto& k = cat();
  if (i > 0 && k.continuation_strict(s[i - 1])) return 0;
  size_t pos = i;
  for (;;) {
    size_t need = 0;
    if (pos < s.size()) {
      if (k.first_of_2(s[pos])) need = 1;
      else if (k.first_of_3(s[pos])) need = 2;
      else if (k.first_of_4(s[pos])) need = 3;
    }
    bool ok = need > 0 && pos + need < s.size();
    for (size_t j = 1; ok && j <= need; ++j) ok = k.continuation(s[pos + j]);
    if (!ok) break;
    pos += need + 1;
  }
  return pos - i;
}

std::u32string decode_inconsistent_utf8(const std::u32string& text) {
  std::u32string out;
  for (size_t i = 0; i < text.size();) {
    if (size_t n = utf8_detector_at(text, i)) {
      const std::u32string sub = text.substr(i, n);
      out += n < text.size() && is_bad(sub) ? fix_encoding(sub) : sub;
      i += n;
    } else {
      out.push_back(text[i++]);
    }
  }
  return out;
}

std::u32string fix_c1_controls(const std::u32string& text) {
  const Charmap& w1252 = charmap("sloppy-windows-1252");
  std::u32string out = text;
  for (char32_t& c : out)
    if (c >= 0x80 && c <= 0x9F) c = w1252.chars[c - 0x80];
  return out;
}

std::u32string fix_encoding_step(const std::u32string& text) {
  if (text.empty() || is_ascii(text) || !is_bad(text)) return text;
  bool latin1_possible = false;
  for (const char* name : kEncodings) {
    const Charmap& m = charmap(name);
    if (!possible_encoding(m, text)) continue;
    latin1_possible |= std::strcmp(name, "latin-1") == 0;
    std::string bytes = *encode_charmap(m, text);
    if (has_altered_utf8(bytes)) bytes = restore_byte_a0(bytes);
    if (m.sloppy) bytes = replace_lossy_sequences(bytes);
    const bool variants = bytes.find('\xED') != std::string::npos || bytes.find('\xC0') != std::string::npos;
    if (auto fixed = decode_utf8_strict(bytes, variants)) return *fixed;
  }
  for (size_t i = 0; i < text.size(); ++i) {
    if (utf8_detector_at(text, i)) {
      std::u32string fixed = decode_inconsistent_utf8(text);
      if (fixed != text) return fixed;
      break;
    }
  }
  // ftfy asks whether "windows-1252" is among the possible charsets, which hold only the sloppy
  // variant, so Latin-1 text is always re-read as strict Windows-1252 when that decodes.
  if (latin1_possible) {
    bool decodes = true;
    for (char32_t c : text) decodes &= !(c == 0x81 || c == 0x8D || c == 0x8F || c == 0x90 || c == 0x9D);
    if (decodes) {
      std::u32string fixed = fix_c1_controls(text);
      if (fixed != text) return fixed;
    }
  }
  if (std::any_of(text.begin(), text.end(), [](char32_t c) { return c >= 0x80 && c <= 0x9F; }))
    return fix_c1_controls(text);
  return text;
}

std::u32string fix_encoding(const std::u32string& text) {
  std::u32string cur = text;
  for (;;) {
    std::u32string next = fix_encoding_step(cur);
    if (next == cur) return cur;
    cur = std::move(next);
  }
}

// ---- the other fixers ---------------------------------------------------------------------------

const std::unordered_map<std::string, std::u32string>& entities() {
  static const auto m = [] {
    std::unordered_map<std::string, std::u32string> m;
    for (const auto& e : kEntities) m.emplace(e.name, from_utf8_literal(e.utf8));
    return m;
  }();
  return m;
}

bool is_ascii_alnum(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// html.unescape of a numeric character reference "&#...;" (nullopt: it leaves it as it is).
std::optional<std::u32string> numeric_reference(const std::u32string& ref) {
  const std::u32string body = ref.substr(2, ref.size() - 3);
  const bool hex = body[0] == 'x' || body[0] == 'X';
  const std::u32string digits = hex ? body.substr(1) : body;
  if (digits.empty()) return std::nullopt;
  uint64_t num = 0;
  for (char32_t c : digits) {
    int v;
    if (c >= '0' && c <= '9') v = static_cast<int>(c - '0');
    else if (hex && c >= 'a' && c <= 'f') v = static_cast<int>(c - 'a' + 10);
    else if (hex && c >= 'A' && c <= 'F') v = static_cast<int>(c - 'A' + 10);
    else return std::nullopt;
    num = std::min<uint64_t>(num * (hex ? 16 : 10) + v, 0x7FFFFFFF);
  }
  if (num == 0) return std::u32string(1, kReplacementChar);
  if (num == 0x0D) return std::u32string(1, U'\r');
  if (num >= 0x80 && num <= 0x9F) return std::u32string(1, charmap("sloppy-windows-1252").chars[num - 0x80]);
  if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) return std::u32string(1, kReplacementChar);
  if ((num >= 0x1 && num <= 0x8) || num == 0xB || (num >= 0xE && num <= 0x1F) || num == 0x7F ||
      (num >= 0xFDD0 && num <= 0xFDEF) || (num & 0xFFFE) == 0xFFFE)
    return std::u32string();
  return std::u32string(1, static_cast<char32_t>(num));
}

std::u32string unescape_html(const std::u32string& text) {
  std::u32string out;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '&') {
      size_t j = i + 1;
      const bool numeric = j < text.size() && text[j] == '#';
      if (numeric) ++j;
      const size_t start = j;
      while (j < text.size() && j - start < 24 && is_ascii_alnum(text[j])) ++j;
      if (j > start && j < text.size() && text[j] == ';') {
        const std::u32string ref = text.substr(i, j + 1 - i);
        auto it = entities().find(encode_utf8(ref));
        std::optional<std::u32string> value;
        if (it != entities().end()) value = it->second;
        else if (numeric) value = numeric_reference(ref);
        if (value) {
          out += *value;
          i = j + 1;
          continue;
        }
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

std::u32string translate(const std::u32string& text,
                         const std::function<const char*(char32_t)>& replacement) {
  std::u32string out;
  for (char32_t c : text) {
    if (const char* r = replacement(c)) out += from_utf8_literal(r);
    else out.push_back(c);
  }
  return out;
}

const char* ligature(char32_t c) {
  switch (c) {
    case 0x132: return "IJ";
    case 0x133: return "ij";
    case 0x149: return "\xCA\xBCn";
    case 0x1F1: return "DZ";
    case 0x1F2: return "Dz";
    case 0x1F3: return "dz";
    case 0x1C4: return "D\xC5\xBD";
    case 0x1C5: return "D\xC5\xBE";
    case 0x1C6: return "d\xC5\xBE";
    case 0x1C7: return "LJ";
    case 0x1C8: return "Lj";
    case 0x1C9: return "lj";
    case 0x1CA: return "NJ";
    case 0x1CB: return "Nj";
    case 0x1CC: return "nj";
    case 0xFB00: return "ff";
    case 0xFB01: return "fi";
    case 0xFB02: return "fl";
    case 0xFB03: return "ffi";
    case 0xFB04: return "ffl";
    case 0xFB05: return "\xC5\xBFt";
    case 0xFB06: return "st";
    default: return nullptr;
  }
}

const char* width_form(char32_t c) {
  if (c != 0x3000 && (c < 0xFF01 || c > 0xFFEF)) return nullptr;
  for (const auto& r : kWidth)
    if (r.cp == c) return r.utf8;
  return nullptr;
}

std::u32string uncurl_quotes(std::u32string text) {
  for (char32_t& c : text) {
    if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
    else if (c >= 0x201C && c <= 0x201F) c = '"';
  }
  return text;
}

std::u32string fix_line_breaks(const std::u32string& text) {
  std::u32string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;
    out.push_back(c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85 ? U'\n' : c);
  }
  return out;
}

// ANSI escapes "ESC [ digits/semicolons letter". Only ASCII digits are taken as digits.
std::u32string remove_terminal_escapes(const std::u32string& text) {
  std::u32string out;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == 0x1B && i + 1 < text.size() && text[i + 1] == '[') {
      size_t j = i + 2;
      while (j < text.size() && ((text[j] >= '0' && text[j] <= '9') || text[j] == ';')) ++j;
      if (j < text.size() && ((text[j] >= 'a' && text[j] <= 'z') || (text[j] >= 'A' && text[j] <= 'Z'))) {
        i = j + 1;
        continue;
      }
    }
    out.push_back(text[i++]);
  }
  return out;
}

bool is_removed_control(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
         (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

std::u32string fix_segment(std::u32string text, bool unescape) {
  for (;;) {
    const std::u32string orig = text;
    if (unescape) text = unescape_html(text);
    text = fix_encoding(text);
    text = fix_c1_controls(text);
    text = translate(text, ligature);
    text = translate(text, width_form);
    text = uncurl_quotes(std::move(text));
    text = fix_line_breaks(text);
    text = remove_terminal_escapes(text);
    text.erase(std::remove_if(text.begin(), text.end(), is_removed_control), text.end());
    text = nfc(text);
    if (text == orig) return text;
  }
}

// ---- NFC --------------------------------------------------------------------------------------

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

uint8_t ccc(char32_t c) {
  auto it = std::upper_bound(std::begin(kCcc), std::end(kCcc), c,
                             [](char32_t v, const CccRange& r) { return v < r.first; });
  if (it == std::begin(kCcc)) return 0;
  --it;
  return c <= it->last ? it->ccc : 0;
}

struct NfcTables {
  std::unordered_map<char32_t, const Decomposition*> decomposition;
  std::unordered_map<uint64_t, char32_t> composition;
  NfcTables() {
    for (const auto& d : kDecompositions) {
      decomposition.emplace(d.cp, &d);
      if (d.composes) composition.emplace((uint64_t(d.a) << 32) | d.b, d.cp);
    }
  }
};

const NfcTables& nfc_tables() {
  static const NfcTables t;
  return t;
}

void decompose(char32_t c, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const auto& t = nfc_tables().decomposition;
  auto it = t.find(c);
  if (it == t.end()) {
    out.push_back(c);
    return;
  }
  decompose(it->second->a, out);
  if (it->second->b) decompose(it->second->b, out);
}

std::optional<char32_t> compose_pair(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const auto& t = nfc_tables().composition;
  auto it = t.find((uint64_t(a) << 32) | b);
  if (it == t.end()) return std::nullopt;
  return it->second;
}

}  // namespace

// ---- public ---------------------------------------------------------------------------------

std::u32string decode_utf8(const std::string& s) {
  std::u32string out;
  const auto* b = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    size_t len = b[i] < 0x80 ? 1 : b[i] >= 0xC2 && b[i] <= 0xDF ? 2 : b[i] >= 0xE0 && b[i] <= 0xEF ? 3
               : b[i] >= 0xF0 && b[i] <= 0xF4 ? 4 : 0;
    std::optional<std::u32string> cp;
    if (len && i + len <= n) cp = decode_utf8_strict(s.substr(i, len), false);
    if (cp && cp->size() == 1) {
      out += *cp;
      i += len;
    } else {
      out.push_back(kReplacementChar);
      ++i;
    }
  }
  return out;
}

std::string encode_utf8(const std::u32string& s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else if (c < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (c >> 12)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (c >> 18)));
      out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

bool is_letter(char32_t c) { return in(kLetters, c); }
bool is_number(char32_t c) { return in(kNumbers, c); }
bool is_white_space(char32_t c) { return in(kWhiteSpace, c); }
bool is_py_space(char32_t c) { return in(kPySpace, c); }
bool is_unmatched(char32_t c) { return in(kUnmatched, c); }

std::u32string lower(const std::u32string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c == 0x3A3) {
      // Final_Sigma: a cased letter before (skipping case-ignorables) and none after.
      size_t j = i;
      while (j > 0 && in(kCaseIgnorable, s[j - 1])) --j;
      bool final_sigma = j > 0 && in(kCased, s[j - 1]);
      if (final_sigma) {
        size_t k = i + 1;
        while (k < s.size() && in(kCaseIgnorable, s[k])) ++k;
        final_sigma = k == s.size() || !in(kCased, s[k]);
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
      continue;
    }
    bool done = false;
    for (const auto& m : kLowerMulti) {
      if (m.cp == c) {
        out += from_utf8_literal(m.utf8);
        done = true;
      }
    }
    if (done) continue;
    auto it = std::upper_bound(std::begin(kLower), std::end(kLower), c,
                               [](char32_t v, const LowerRun& r) { return v < r.first; });
    if (it != std::begin(kLower)) {
      --it;
      if (c <= it->last && (c - it->first) % it->step == 0) {
        out.push_back(static_cast<char32_t>(static_cast<int64_t>(c) + it->delta));
        continue;
      }
    }
    out.push_back(c);
  }
  return out;
}

std::u32string nfc(const std::u32string& s) {
  if (is_ascii(s)) return s;
  std::u32string d;
  for (char32_t c : s) decompose(c, d);
  // Canonical ordering: stable sort of every run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + i, d.begin() + j,
                     [](char32_t a, char32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }
  // Canonical composition.
  // C composes with the last starter S unless something between them is a starter or has a
  // combining class >= C's; in canonical order that is decided by the character just before C.
  std::u32string out;
  size_t starter = std::u32string::npos;
  for (char32_t c : d) {
    const int cc = ccc(c);
    if (starter != std::u32string::npos) {
      const bool adjacent = starter + 1 == out.size();
      if (adjacent || (ccc(out.back()) != 0 && ccc(out.back()) < cc)) {
        if (auto comp = compose_pair(out[starter], c)) {
          out[starter] = *comp;
          continue;
        }
      }
    }
    if (cc == 0) starter = out.size();
    out.push_back(c);
  }
  return out;
}

bool is_bad(const std::u32string& s) {
  static const std::vector<Pattern> patterns = build_badness();
  for (size_t i = 0; i < s.size(); ++i)
    for (const auto& p : patterns)
      if ((!p.anchored || i == 0) && match_at(p, s, i, 0)) return true;
  return false;
}

std::u32string fix_text(const std::u32string& s) {
  std::u32string out;
  bool unescape = true;
  for (size_t pos = 0; pos < s.size();) {
    size_t end = s.find(U'\n', pos);
    end = end == std::u32string::npos ? s.size() : end + 1;
    const std::u32string segment = s.substr(pos, end - pos);
    // A literal '<' means real HTML: entities stay from here on.
    if (segment.find(U'<') != std::u32string::npos) unescape = false;
    out += fix_segment(segment, unescape);
    pos = end;
  }
  return out;
}

}  // namespace kosmosg::text::unicode
