#include <array>
#include <cstring>
#include <fstream>
#include <limits>

#include "data/internal.h"
#include "kosmosg/data/loader.h"
#include "kosmosg/error.h"
#include "kosmosg/io/file.h"
#include "kosmosg/io/image.h"

namespace kosmosg::data::detail {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

bool is_ascii_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1C && c <= 0x1F); }

}  // namespace

double uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  // Draws in the largest multiple of n below 2^64 are accepted, so every residue is equally likely.
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  for (;;) {
    const uint64_t x = rng();
    if (x < limit) return x % n;
  }
}

void LineIndex::add_file(const std::string& path) {
  io::require_regular_file(path, "data");  // a FIFO or device would block or never end
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("data", path + ": cannot be opened for reading");
  const auto file = static_cast<uint32_t>(files_.size());
  files_.push_back(path);
  std::array<char, 1 << 16> buf{};
  uint64_t offset = 0, start = 0;
  uint32_t number = 1;
  bool blank = true;
  while (in) {
    in.read(buf.data(), buf.size());
    const auto n = static_cast<size_t>(in.gcount());
    for (size_t i = 0; i < n; ++i, ++offset) {
      const auto c = static_cast<unsigned char>(buf[i]);
      if (c == '\n') {
        if (!blank) lines_.push_back({file, number, start, offset - start});
        start = offset + 1, blank = true, ++number;
      } else if (blank && !is_ascii_space(c)) {
        blank = false;
      }
    }
  }
  if (in.bad()) fail("data", path + ": read error");
  if (!blank) lines_.push_back({file, number, start, offset - start});
}

std::string LineIndex::read(int64_t i) const {
  const Line& line = lines_.at(static_cast<size_t>(i));
  std::ifstream in(files_[line.file], std::ios::binary);
  std::string out(line.length, '\0');
  if (!in || !in.seekg(static_cast<std::streamoff>(line.offset)) ||
      !in.read(out.data(), static_cast<std::streamsize>(line.length)))
    fail("data", where(i) + ": cannot be read back (was the file changed after it was indexed?)");
  return out;
}

std::string LineIndex::where(int64_t i) const {
  const Line& line = lines_.at(static_cast<size_t>(i));
  return files_[line.file] + " line " + std::to_string(line.number);
}

std::string base64_decode(const std::string& text, const std::string& what) {
  static const std::array<int8_t, 256> value = [] {
    std::array<int8_t, 256> v{};
    v.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) v[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return v;
  }();
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t bits = 0;
  int group = 0;  // characters of the current 4-character group seen so far
  int pads = 0;
  bool padded = false;
  for (unsigned char c : text) {
    if (c == '=') {
      // Padding that completes a group of at least two characters ends the data, as in binascii.
      if (group >= 2 && group + ++pads >= 4) {
        padded = true;
        break;
      }
      continue;
    }
    const int8_t v = value[c];
    if (v < 0) continue;
    bits = (bits << 6) | static_cast<uint32_t>(v);
    if (++group == 4) {
      out.push_back(static_cast<char>((bits >> 16) & 0xFF));
      out.push_back(static_cast<char>((bits >> 8) & 0xFF));
      out.push_back(static_cast<char>(bits & 0xFF));
      bits = 0, group = 0;
    }
  }
  if (group == 1 || (group > 1 && !padded))
    fail("base64", what + ": invalid base64 data (" + std::to_string(group) +
                       " characters left over in the last group, expected a complete, padded group)");
  if (group == 2) out.push_back(static_cast<char>((bits >> 4) & 0xFF));
  if (group == 3) {
    out.push_back(static_cast<char>((bits >> 10) & 0xFF));
    out.push_back(static_cast<char>((bits >> 2) & 0xFF));
  }
  return out;
}

std::string py_strip(const std::string& s) {
  size_t begin = 0, end = s.size();
  while (begin < end && is_ascii_space(static_cast<unsigned char>(s[begin]))) ++begin;
  while (end > begin && is_ascii_space(static_cast<unsigned char>(s[end - 1]))) --end;
  return s.substr(begin, end - begin);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t at = s.find(sep); at != std::string::npos; at = s.find(sep, start)) {
    parts.push_back(s.substr(start, at - start));
    start = at + 1;
  }
  parts.push_back(s.substr(start));
  return parts;
}

at::Tensor mllm_image(const std::string& bytes, const std::string& what, const SampleOptions& options) {
  return io::clip_pixel_values(io::decode_image(bytes, what), options.image_size);
}

at::Tensor target_image(const std::string& bytes, const std::string& what, const SampleOptions& options) {
  return io::vae_pixel_values(io::decode_image(bytes, what), options.target_size);
}

const text::KosmosGTokenizer& tokenizer_of(const SampleOptions& options) {
  if (!is_kosmosg_stage(options.stage))
    fail("data", std::string("the ") + stage_name(options.stage) +
                     " stage reads JSONL manifests of {\"prompt\", \"target\"} records, not the official TSV sources");
  if (!options.tokenizer) fail("data", "SampleOptions has no tokenizer, expected the Kosmos-G tokenizer");
  return *options.tokenizer;
}

void filter_out(const std::string& where, const std::string& what) {
  throw FilteredOut("[" + where + "] " + what);
}

void check_caption_length(const std::string& caption, size_t spm_tokens, const SampleOptions& options,
                          const std::string& where) {
  if (spm_tokens > 128)
    filter_out("data", where + ": caption has " + std::to_string(spm_tokens) + " SentencePiece tokens, above the limit of 128");
  if (options.stage != StageKind::Align) return;
  if (spm_tokens > 85)
    filter_out("data", where + ": caption has " + std::to_string(spm_tokens) +
                     " SentencePiece tokens, above the align stage's limit of 85");
  if (options.clip_tokenizer) {
    const size_t clip_tokens = options.clip_tokenizer->bpe_tokens(caption).size();
    if (clip_tokens > 75)
      filter_out("data", where + ": caption has " + std::to_string(clip_tokens) +
                       " CLIP tokens, above the align stage's limit of 75");
  }
}

}  // namespace kosmosg::data::detail

namespace kosmosg::data {

uint64_t mix_seeds(std::initializer_list<uint64_t> values) {
  uint64_t h = detail::splitmix64(values.size());
  for (uint64_t v : values) h = detail::splitmix64(h ^ detail::splitmix64(v));
  return h;
}

}  // namespace kosmosg::data
