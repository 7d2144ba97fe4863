// libFuzzer harness: encoded image bytes through io::decode_image and the model inputs made from
// it, as images in prompts and TSV shards are read.
#include "fuzz_support.h"
#include "kosmosg/error.h"
#include "kosmosg/io/image.h"

namespace io = kosmosg::io;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    // A small pixel limit keeps each input fast; the limit's own check is what is exercised.
    const at::Tensor image = io::decode_image(std::string(reinterpret_cast<const char*>(data), size), "fuzz input",
                                              int64_t{1} << 16);
    (void)io::clip_pixel_values(image, 32);
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for a bad image.
  }
  return 0;
}
