// libFuzzer harness: a torch.save zip file through the ZIP reader, the checkpoint loader and the
// fairseq checkpoint reader, as `kosmosg convert` and `inspect` read it.
#include "fuzz_support.h"
#include "kosmosg/error.h"
#include "kosmosg/io/torch_checkpoint.h"
#include "kosmosg/io/zip.h"

namespace io = kosmosg::io;
using kosmosg::fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = kosmosg::fuzz::write_file("input.pt", data, size);
  try {
    const auto zip = io::ZipReader::open(path);
    for (const auto& name : zip.names()) {
      const io::ZipEntry& entry = zip.entry(name);
      check(entry.data_offset <= size && entry.compressed_size <= size - entry.data_offset,
            "an entry's bytes lie inside the file");
      try {
        const io::ZipBytes bytes = zip.bytes(name);
        check(bytes.size == entry.size, "a stored entry has its stated size");
      } catch (const kosmosg::Error&) {
      }
    }
    (void)io::read_fairseq_checkpoint(io::load_torch_checkpoint(path), path);
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for a bad checkpoint.
  }
  return 0;
}
