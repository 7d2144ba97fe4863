// libFuzzer harness: prompts through the Kosmos-G prompt layout and the training sequences, with
// the shapes world's tokenizer. The first byte picks the image slots per image (0-79); the rest
// is the prompt (for InstructPix2Pix: caption, TAB, edit).
#include <algorithm>
#include <numeric>

#include "fuzz_support.h"
#include "kosmosg/error.h"
#include "kosmosg/text/prompt_layout.h"

namespace text = kosmosg::text;
using kosmosg::fuzz::check;

namespace {

void check_sequence(const text::TrainingSequence& s) {
  check(s.doc.size() == s.input_mask.size() && s.doc.size() == s.loss_mask.size(),
        "a training sequence's masks match its document");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto tokenizer =
      text::KosmosGTokenizer::from_files(kosmosg::fuzz::source_file("configs/shapes/kosmosg/sentencepiece.bpe.model"),
                                         kosmosg::fuzz::source_file("configs/shapes/kosmosg/dict.txt"));
  if (size == 0) return 0;
  const size_t slots = data[0] % 80;
  const std::string prompt(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    const auto pieces = text::split_prompt(prompt);
    check(!pieces.empty(), "split_prompt gives at least one text");
    const auto layout = text::layout_prompt(tokenizer, prompt, slots);
    check(layout.tokens.size() == layout.image_mask.size(), "a layout's mask matches its tokens");
    check(layout.num_images == pieces.size() - 1, "a layout has one image per placeholder");
    const size_t masked = std::accumulate(layout.image_mask.begin(), layout.image_mask.end(), size_t{0});
    check(masked == layout.num_images * slots, "a layout masks the slots of each image");
    (void)text::negative_tokens(tokenizer, prompt);
    check_sequence(text::laion_sequence(tokenizer, prompt));
    check_sequence(text::interleaved_sequence(tokenizer, pieces, slots));
    const size_t tab = std::min(prompt.find('\t'), prompt.size());
    check_sequence(text::instruct_pix2pix_sequence(tokenizer, prompt.substr(0, tab),
                                                   tab < prompt.size() ? prompt.substr(tab + 1) : "", slots));
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for a prompt the layout cannot take.
  }
  return 0;
}
