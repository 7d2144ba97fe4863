// libFuzzer harness: a safetensors file through io::SafeTensors, as weight loading reads it.
#include <cstring>
#include <numeric>

#include "fuzz_support.h"
#include "kosmosg/error.h"
#include "kosmosg/io/safetensors.h"

namespace io = kosmosg::io;
using kosmosg::fuzz::check;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = kosmosg::fuzz::write_file("input.safetensors", data, size);
  try {
    const auto file = io::SafeTensors::open(path);
    // Open checked the header, so it holds its 8-byte length and the data section follows it.
    check(size >= 8, "an accepted file holds its header length");
    uint64_t header = 0;
    std::memcpy(&header, data, 8);
    check(header <= size - 8, "an accepted header lies inside the file");
    const uint64_t data_bytes = size - 8 - header;
    for (const auto& name : file.keys()) {
      const io::TensorInfo& info = file.info(name);
      check(info.begin <= info.end && info.end <= data_bytes, "a tensor's byte range lies in the data section");
      const at::Tensor tensor = file.get(name);
      check(tensor.nbytes() == info.end - info.begin, "a tensor covers exactly its byte range");
      check(static_cast<size_t>(tensor.dim()) == info.shape.size(), "a tensor has its declared rank");
      // Reading every byte turns a view outside the mapping into a fault.
      if (tensor.is_contiguous() && tensor.nbytes() > 0) {
        const auto* bytes = static_cast<const uint8_t*>(tensor.data_ptr());
        volatile uint64_t sum = std::accumulate(bytes, bytes + tensor.nbytes(), uint64_t{0});
        (void)sum;
      }
    }
    (void)file.tensors();
    (void)file.metadata();
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for a bad file.
  }
  return 0;
}
