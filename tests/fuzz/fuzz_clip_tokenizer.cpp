// libFuzzer harness: the CLIP BPE tokenizer. Most inputs are prompt text for the shapes world's
// tokenizer (configs/shapes/tokenizer); an input whose first byte is a multiple of 8 is instead a
// vocab.json and a merges.txt, separated by the first NUL byte, to load and use.
#include <algorithm>

#include "fuzz_support.h"
#include "kosmosg/error.h"
#include "kosmosg/text/clip_tokenizer.h"

namespace text = kosmosg::text;
using kosmosg::fuzz::check;

namespace {

void exercise(const text::CLIPTokenizer& tokenizer, const std::string& prompt) {
  const auto ids = tokenizer.encode(prompt);
  check(ids.size() == 77, "encode gives max_length ids");
  check(ids.front() == tokenizer.bos_id(), "encode starts with bos");
  (void)tokenizer.bpe_tokens(prompt);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto shapes = text::CLIPTokenizer::from_folder(kosmosg::fuzz::source_file("configs/shapes/tokenizer"));
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] % 8 != 0) {
      exercise(shapes, rest);
      return 0;
    }
    const size_t nul = std::min(rest.find('\0'), rest.size());
    const std::string vocab = kosmosg::fuzz::write_file("vocab.json", rest.substr(0, nul));
    const std::string merges = kosmosg::fuzz::write_file("merges.txt", nul < rest.size() ? rest.substr(nul + 1) : "");
    exercise(text::CLIPTokenizer::from_files(vocab, merges), "a red circle above a blue square, <|endoftext|>");
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for bad tokenizer files or text.
  }
  return 0;
}
