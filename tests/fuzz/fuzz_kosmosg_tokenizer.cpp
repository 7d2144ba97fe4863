// libFuzzer harness: the Kosmos-G tokenizer (SentencePiece + fairseq dictionary). Most inputs are
// text for the shapes world's tokenizer (configs/shapes/kosmosg); an input whose first byte is a
// multiple of 8 is instead a dict.txt to load with the same SentencePiece model.
#include "fuzz_support.h"
#include "kosmosg/error.h"
#include "kosmosg/text/kosmosg_tokenizer.h"

namespace text = kosmosg::text;
using kosmosg::fuzz::check;

namespace {

void exercise(const text::KosmosGTokenizer& tokenizer, const std::string& input) {
  const auto ids = tokenizer.encode(input);
  const auto pieces = tokenizer.split(input);
  check(ids.size() == pieces.size(), "encode and split agree on the number of pieces");
  for (size_t i = 0; i < ids.size(); ++i) {
    check(ids[i] == pieces[i].id, "encode and split agree on ids");
    check(ids[i] >= 0 && ids[i] < tokenizer.vocab_size(), "ids lie in the dictionary");
    (void)tokenizer.symbol(ids[i]);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string model = kosmosg::fuzz::source_file("configs/shapes/kosmosg/sentencepiece.bpe.model");
  static const auto shapes =
      text::KosmosGTokenizer::from_files(model, kosmosg::fuzz::source_file("configs/shapes/kosmosg/dict.txt"));
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] % 8 != 0) {
      exercise(shapes, rest);
      return 0;
    }
    const auto tokenizer = text::KosmosGTokenizer::from_files(model, kosmosg::fuzz::write_file("dict.txt", rest));
    exercise(tokenizer, "a red circle above a blue square");
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for a bad dictionary.
  }
  return 0;
}
