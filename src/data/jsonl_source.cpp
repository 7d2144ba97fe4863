// JSONL manifests: one JSON object per line, {"text": ...} for text-only documents, or
// {"prompt": "<i> ...", "images": [...], "target": ...} for interleaved and caption samples. A
// "labels" value (ground truth for evaluation, as the shapes world's test manifests carry) is
// ignored, so evaluation manifests load as training data too. "negatives" lists captions the
// target is not (hard negatives for the t2i stage, which draws one per sample).
#include <cctype>
#include <filesystem>

#include "data/internal.h"
#include "kosmosg/error.h"
#include "kosmosg/io/config.h"
#include "kosmosg/io/image.h"

namespace kosmosg::data::detail {
namespace {

namespace fs = std::filesystem;

// Whitespace runs become one space, none at either end.
std::string collapse_spaces(const std::string& s) {
  std::string out;
  bool space = false;
  for (unsigned char c : s) {
    if (std::isspace(c)) {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    out.push_back(static_cast<char>(c));
    space = false;
  }
  return out;
}

std::string string_field(const io::Json& record, const char* key, const std::string& where) {
  const auto& value = record.at(key);
  if (!value.is_string()) fail("jsonl", where + ": '" + key + "' is " + value.dump() + ", expected a string");
  return value.get<std::string>();
}

class JsonlSource final : public LineSource {
 public:
  explicit JsonlSource(const std::string& path) : dir_(fs::path(path).parent_path()) {
    name_ = fs::path(path).stem().string();
    lines_.add_file(path);
    if (lines_.size() == 0) fail("jsonl", path + ": no records (the manifest has no non-blank line)");
  }

  Sample prepare(int64_t index, std::mt19937_64& rng, const SampleOptions& options) const override {
    const std::string where = lines_.where(index);
    const io::Json record = io::parse_json(lines_.read(index), where);
    if (!record.is_object()) fail("jsonl", where + ": expected a JSON object, got " + record.type_name());
    for (const auto& [key, value] : record.items())
      if (key != "text" && key != "prompt" && key != "images" && key != "target" && key != "labels" &&
          key != "negatives")
        fail("jsonl", where + ": unknown key '" + key + "', expected text, prompt, images, target, labels or negatives");
    const bool has_text = record.contains("text"), has_prompt = record.contains("prompt");
    if (has_text == has_prompt) fail("jsonl", where + ": expected exactly one of 'text' and 'prompt'");

    std::vector<std::string> images;
    if (record.contains("images")) {
      const auto& list = record.at("images");
      if (!list.is_array()) fail("jsonl", where + ": 'images' is " + list.dump() + ", expected a list of paths");
      for (const auto& image : list) {
        if (!image.is_string()) fail("jsonl", where + ": 'images' holds " + image.dump() + ", expected paths");
        images.push_back(image.get<std::string>());
      }
    }
    std::vector<std::string> negatives;
    if (record.contains("negatives")) {
      const auto& list = record.at("negatives");
      if (!list.is_array()) fail("jsonl", where + ": 'negatives' is " + list.dump() + ", expected a list of captions");
      for (const auto& negative : list) {
        if (!negative.is_string() || negative.get<std::string>().empty())
          fail("jsonl", where + ": 'negatives' holds " + negative.dump() + ", expected non-empty captions");
        negatives.push_back(collapse_spaces(negative.get<std::string>()));
      }
    }
    const std::string target = record.contains("target") ? string_field(record, "target", where) : "";
    if (has_text && (!images.empty() || record.contains("target")))
      fail("jsonl", where + ": a 'text' record is text only; use 'prompt' with 'images' or 'target'");

    const std::string text = string_field(record, has_text ? "text" : "prompt", where);
    const auto pieces = text::split_prompt(text);
    const size_t placeholders = pieces.size() - 1;
    if (images.size() != placeholders)
      fail("jsonl", where + ": the prompt has " + std::to_string(placeholders) + " <i> placeholders but " +
                        std::to_string(images.size()) + " images are listed");
    if (options.stage == StageKind::Align && placeholders > 0)
      filter_out("jsonl", where + ": has " + std::to_string(placeholders) + " images; the align stage takes captions only");
    if (options.stage == StageKind::T2I && placeholders > 0)
      filter_out("jsonl", where + ": has " + std::to_string(placeholders) + " images; the t2i stage takes captions only");
    if ((options.stage == StageKind::Instruct || !is_kosmosg_stage(options.stage)) && target.empty())
      filter_out("jsonl", where + ": has no 'target' image, which stage " + stage_name(options.stage) + " needs");

    Sample sample;
    for (const auto& piece : pieces) sample.caption += piece;
    sample.caption = collapse_spaces(sample.caption);
    if (!is_kosmosg_stage(options.stage)) {
      if (!negatives.empty()) sample.negative = negatives[uniform_below(rng, negatives.size())];
      sample.target = io::vae_pixel_values(read(target, where), options.target_size);
      return sample;
    }
    const auto& tokenizer = tokenizer_of(options);
    const auto image_length = static_cast<size_t>(options.image_token_length);
    if (placeholders == 0) {
      sample.sequence = text::laion_sequence(tokenizer, text);
      // Captions (a prompt, or any text in the align stage) get the official caption limits;
      // text documents of the LM stage are not captions.
      if (has_prompt || options.stage == StageKind::Align)
        check_caption_length(text, sample.sequence.doc.size() - 2, options, where);
    } else {
      sample.sequence = text::interleaved_sequence(tokenizer, pieces, image_length);
    }
    if (options.stage == StageKind::Align) return sample;
    for (const auto& image : images)
      sample.images.push_back(io::clip_pixel_values(read(image, where), options.image_size));
    if (options.stage == StageKind::Instruct)
      sample.target = io::vae_pixel_values(read(target, where), options.target_size);
    return sample;
  }

 private:
  // The image at `path` (relative to the manifest's folder); errors also name the record.
  at::Tensor read(const std::string& path, const std::string& where) const {
    try {
      return io::read_image(fs::path(path).is_absolute() ? path : (dir_ / path).string());
    } catch (const Error& e) {
      fail("jsonl", where + ": " + e.what());
    }
  }

  fs::path dir_;
};

}  // namespace

std::unique_ptr<Source> open_jsonl(const std::string& path) { return std::make_unique<JsonlSource>(path); }

}  // namespace kosmosg::data::detail
