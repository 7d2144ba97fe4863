#pragma once
// Unicode text handling behind the CLIP tokenizer, matching the Python it reimplements: UTF-8
// conversion, the character classes of CLIP's split pattern (`regex` module), str.lower, NFC, and
// python-ftfy 6.1.1's fix_text with its default options.
#include <string>

namespace kosmosg::text::unicode {

// Code points of UTF-8 `s`; each byte of an invalid sequence becomes U+FFFD.
std::u32string decode_utf8(const std::string& s);
// UTF-8 of `s`.
std::string encode_utf8(const std::u32string& s);

// \p{L}, \p{N} and \s of the `regex` module (as CLIP's pattern compiles them, IGNORECASE).
bool is_letter(char32_t c);
bool is_number(char32_t c);
bool is_white_space(char32_t c);
// str.isspace(): what str.strip() removes.
bool is_py_space(char32_t c);
// Characters that none of the pattern's alternatives accepts (the pattern skips them).
bool is_unmatched(char32_t c);

// Python's str.lower (full mappings, final sigma).
std::u32string lower(const std::u32string& s);
// unicodedata.normalize("NFC", s).
std::u32string nfc(const std::u32string& s);

// ftfy.fix_text(s) of python-ftfy 6.1.1 with default options. Named HTML entities are those of
// HTML 4 (and &apos;) in the spellings HTML5 and ftfy accept, not all 2,125 HTML5 names.
std::u32string fix_text(const std::u32string& s);
// ftfy.badness.is_bad: whether `s` looks like it contains mojibake.
bool is_bad(const std::u32string& s);

}  // namespace kosmosg::text::unicode
