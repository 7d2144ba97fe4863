// The official TSV data folders (reference §7): json/train.json lists the shard files, one
// sample per line, TAB-separated columns, images as base64-encoded files.
#include <algorithm>
#include <filesystem>
#include <optional>

#include "data/internal.h"
#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "text/unicode.h"

namespace kosmosg::data::detail {
namespace {

namespace fs = std::filesystem;
namespace unicode = text::unicode;

// A TSV folder: `kind` names it in errors, `shard_dir` is where its files lie ("" or "data").
class TsvSource : public LineSource {
 public:
  TsvSource(const std::string& dir, const std::string& kind, const std::string& shard_dir) : kind_(kind) {
    fs::path root = fs::path(dir).lexically_normal();
    if (root.filename().empty()) root = root.parent_path();
    name_ = root.filename().string();
    const std::string index = (root / "json" / "train.json").string();
    std::error_code ec;
    if (!fs::exists(index, ec))
      fail(kind, dir + ": no json/train.json, expected the official " + kind + " folder layout");
    const io::Json list = io::read_json(index);
    if (!list.is_array()) fail(kind, index + ": expected a list of {\"source\": [files], ...} objects");
    for (const auto& entry : list) {
      if (!entry.is_object() || !entry.contains("source") || !entry.at("source").is_array())
        fail(kind, index + ": entry " + entry.dump() + " has no \"source\" list of file names");
      for (const auto& file : entry.at("source")) {
        if (!file.is_string()) fail(kind, index + ": \"source\" holds " + file.dump() + ", expected file names");
        const fs::path path = root / shard_dir / file.get<std::string>();
        if (!fs::exists(path, ec)) fail(kind, index + " lists " + path.string() + ", which does not exist");
        lines_.add_file(path.string());
      }
    }
    if (lines_.size() == 0) fail(kind, dir + ": no records (the files listed in json/train.json are empty)");
  }

 protected:
  // The columns of record `index`, split as the official loaders do: line.strip().split('\t').
  std::vector<std::string> columns(int64_t index) const { return split(py_strip(lines_.read(index)), '\t'); }

  void require_columns(const std::vector<std::string>& cols, size_t count, const std::string& where,
                       const std::string& layout) const {
    if (cols.size() < count)
      fail(kind_, where + ": " + std::to_string(cols.size()) + " columns, expected at least " + std::to_string(count) +
                      " (" + layout + ")");
  }

  // The decoded bytes of base64 column `column`.
  std::string image_bytes(const std::vector<std::string>& cols, size_t column, const std::string& where) const {
    const std::string what = where + " column " + std::to_string(column);
    if (column >= cols.size())
      fail(kind_, what + " is missing: the row has " + std::to_string(cols.size()) + " columns");
    return base64_decode(cols[column], what);
  }

  std::string kind_;
};

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

class LaionSource final : public TsvSource {
 public:
  explicit LaionSource(const std::string& dir) : TsvSource(dir, "laion", "") {}

  Sample prepare(int64_t index, std::mt19937_64&, const SampleOptions& options) const override {
    const std::string where = lines_.where(index);
    const auto cols = columns(index);
    require_columns(cols, 5, where, "id, caption, image, width, height");
    if (!all_digits(cols[3]) || !all_digits(cols[4]))
      fail(kind_, where + ": width '" + cols[3] + "' or height '" + cols[4] + "' is not a whole number");
    // Only sizes below 384 matter, so long digit strings need no exact value.
    const auto size_of = [](const std::string& s) { return s.size() > 6 ? int64_t{1000000} : std::stoll(s); };
    if (options.stage != StageKind::Align && (size_of(cols[3]) < 384 || size_of(cols[4]) < 384))
      filter_out(kind_, where + ": image is " + cols[3] + "x" + cols[4] + ", below the 384-pixel minimum outside the align stage");
    Sample sample;
    sample.caption = cols[1];
    sample.sequence = text::laion_sequence(tokenizer_of(options), cols[1]);
    check_caption_length(cols[1], sample.sequence.doc.size() - 2, options, where);
    if (options.stage == StageKind::Instruct) sample.target = target_image(image_bytes(cols, 2, where), where, options);
    return sample;
  }
};

class InstructPix2PixSource final : public TsvSource {
 public:
  explicit InstructPix2PixSource(const std::string& dir) : TsvSource(dir, "instructpix2pix", "data") {}

  Sample prepare(int64_t index, std::mt19937_64& rng, const SampleOptions& options) const override {
    const std::string where = lines_.where(index);
    const auto cols = columns(index);
    const bool drop_caption = uniform(rng) < 0.5;
    require_columns(cols, 4, where, "input caption, edit, then input and edited image per seed");
    const size_t seed = uniform_below(rng, (cols.size() - 2) / 2);
    if (options.stage == StageKind::Align)
      filter_out(kind_, where + ": an image editing sample; the align stage takes captions only");
    Sample sample;
    sample.sequence = text::instruct_pix2pix_sequence(tokenizer_of(options), drop_caption ? "" : cols[0], cols[1],
                                                      static_cast<size_t>(options.image_token_length));
    const size_t input = 2 + 2 * seed;
    sample.images.push_back(mllm_image(image_bytes(cols, input, where), where + " column " + std::to_string(input), options));
    if (options.stage == StageKind::Instruct)
      sample.target = target_image(image_bytes(cols, input + 1, where), where + " column " + std::to_string(input + 1), options);
    return sample;
  }
};

// ---- OpenImages entity selection (reference §7.3), on code points as Python's str indexes ------

bool is_word(char32_t c) { return c == U'_' || unicode::is_letter(c) || unicode::is_number(c); }

char32_t fold(char32_t c) {
  if (c < 128) return c >= U'A' && c <= U'Z' ? c + 32 : c;
  const auto lowered = unicode::lower(std::u32string(1, c));
  return lowered.size() == 1 ? lowered[0] : c;
}

// Whether regex \b holds at position p of s.
bool boundary(const std::u32string& s, size_t p) {
  const bool before = p > 0 && is_word(s[p - 1]);
  const bool after = p < s.size() && is_word(s[p]);
  return before != after;
}

// The first match of the regex \b<tag>\b in `s` with `tag` taken literally, as [start, end).
std::optional<std::pair<size_t, size_t>> find_word(const std::u32string& s, const std::u32string& tag,
                                                   bool ignore_case) {
  for (size_t p = 0; p + tag.size() <= s.size(); ++p) {
    if (!boundary(s, p)) continue;
    bool equal = true;
    for (size_t i = 0; i < tag.size() && equal; ++i)
      equal = ignore_case ? fold(s[p + i]) == fold(tag[i]) : s[p + i] == tag[i];
    if (equal && boundary(s, p + tag.size())) return std::make_pair(p, p + tag.size());
  }
  return std::nullopt;
}

bool is_colour(const std::string& tag) {
  static const char* colours[] = {"yellow", "blue",   "red",  "green", "white",  "black",  "brown", "grey",
                                  "gray",   "purple", "pink", "orange", "cyan", "silver", "gold",  "golden"};
  return std::find(std::begin(colours), std::end(colours), tag) != std::end(colours);
}

bool ends_fragment(char32_t c) {
  return c == U' ' || c == U',' || c == U'.' || c == U'!' || c == U'?' || c == U';' || c == U':' || c == U')' ||
         c == U']' || c == U'}';
}

class OpenImagesSource final : public TsvSource {
 public:
  explicit OpenImagesSource(const std::string& dir) : TsvSource(dir, "openimages", "data") {}

  Sample prepare(int64_t index, std::mt19937_64& rng, const SampleOptions& options) const override {
    const std::string where = lines_.where(index);
    const auto cols = columns(index);
    const bool drop_object = uniform(rng) < 0.5;
    require_columns(cols, 3, where, "caption, entity tags, image, then two crops per tag");
    if (options.stage == StageKind::Align)
      filter_out(kind_, where + ": a sample with entity images; the align stage takes captions only");
    const std::u32string caption = unicode::decode_utf8(cols[0]);
    const auto entities = select_entities(caption, split(cols[1], ','));

    std::vector<std::string> texts;
    std::vector<size_t> image_columns;
    std::u32string rest = caption;
    for (const auto& [tag, k] : entities) {
      const auto match = find_word(rest, tag, true);
      if (!match) continue;  // consumed by an earlier entity's fragment
      size_t tail = match->second;
      while (tail < rest.size() && !ends_fragment(rest[tail])) ++tail;
      std::u32string fragment = rest.substr(0, drop_object ? match->first : tail);
      if (fragment.empty())
        fail(kind_, where + ": entity '" + unicode::encode_utf8(tag) +
                        "' starts the remaining caption and is dropped, leaving no text before its image "
                        "(the official loader skips such samples)");
      if (fragment.back() != U' ') fragment.push_back(U' ');
      texts.push_back(unicode::encode_utf8(fragment));
      rest = rest.substr(tail);
      image_columns.push_back(3 + 2 * k + (uniform(rng) <= 0.5 ? 1 : 0));
    }
    texts.push_back(unicode::encode_utf8(rest));

    Sample sample;
    sample.caption = cols[0];
    sample.sequence =
        text::interleaved_sequence(tokenizer_of(options), texts, static_cast<size_t>(options.image_token_length));
    for (size_t column : image_columns)
      sample.images.push_back(
          mllm_image(image_bytes(cols, column, where), where + " column " + std::to_string(column), options));
    if (options.stage == StageKind::Instruct)
      sample.target = target_image(image_bytes(cols, 2, where), where + " column 2", options);
    return sample;
  }

 private:
  // The kept tags with their column index k, in caption order (reference §7.3 steps 2 and 3).
  static std::vector<std::pair<std::u32string, size_t>> select_entities(const std::u32string& caption,
                                                                         const std::vector<std::string>& tags) {
    std::vector<std::u32string> all;
    for (const auto& tag : tags) all.push_back(unicode::decode_utf8(tag));
    // In insertion order of a Python dict: a repeated tag keeps its first place and its last index.
    std::vector<std::pair<std::u32string, size_t>> kept;
    for (size_t k = 0; k < all.size(); ++k) {
      // Empty tags never make a fragment (the official loop skips them), so they are left out here.
      if (all[k].empty() || is_colour(tags[k]) || !find_word(caption, all[k], true)) continue;
      // The official sub-word test compiles the tag unescaped and case-sensitively; tags are taken
      // literally here, which differs only for tags holding regex metacharacters.
      const auto within = std::count_if(all.begin(), all.end(), [&](const std::u32string& other) {
        return find_word(other, all[k], false).has_value();
      });
      if (within > 1) continue;
      const auto it = std::find_if(kept.begin(), kept.end(), [&](const auto& e) { return e.first == all[k]; });
      if (it != kept.end()) it->second = k;
      else kept.emplace_back(all[k], k);
    }
    std::stable_sort(kept.begin(), kept.end(), [&](const auto& a, const auto& b) {
      return find_word(caption, a.first, true)->second < find_word(caption, b.first, true)->second;
    });
    return kept;
  }
};

}  // namespace

std::unique_ptr<Source> open_laion(const std::string& dir) { return std::make_unique<LaionSource>(dir); }
std::unique_ptr<Source> open_instructpix2pix(const std::string& dir) {
  return std::make_unique<InstructPix2PixSource>(dir);
}
std::unique_ptr<Source> open_openimages(const std::string& dir) { return std::make_unique<OpenImagesSource>(dir); }

}  // namespace kosmosg::data::detail
