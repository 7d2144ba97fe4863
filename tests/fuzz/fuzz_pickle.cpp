// libFuzzer harness: raw pickle bytes through the restricted unpickler, then the conversions a
// checkpoint goes through (fairseq fields, the config as JSON).
#include <ATen/ATen.h>

#include "fuzz_support.h"
#include "kosmosg/error.h"
#include "kosmosg/io/pickle.h"
#include "kosmosg/io/torch_checkpoint.h"

namespace io = kosmosg::io;
using K = io::PickleValue::Kind;

namespace {

// Stands in for the zip archive's storages: ('storage', type, key, location, numel) gives a
// zeroed float storage of numel elements, small ones only, as torch_checkpoint's loader would
// give one of the archive's entries.
io::PickleValue fake_storage(const io::PickleValue& pid) {
  if (pid.kind() != K::Tuple || pid.as_tuple().size() != 5 || pid.as_tuple()[4].kind() != K::Int)
    kosmosg::fail("fuzz", "persistent id is not ('storage', type, key, location, numel)");
  const int64_t numel = pid.as_tuple()[4].as_int();
  if (numel < 0 || numel > 4096) kosmosg::fail("fuzz", "storage of " + std::to_string(numel) + " elements");
  return io::PickleValue::tensor(at::zeros({numel}, at::kFloat));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    io::UnpickleOptions options;
    options.source = "fuzz input";
    options.persistent_load = fake_storage;
    io::PickleValue value = io::unpickle(data, size, options);
    (void)value.describe();
    try {
      (void)io::pickle_to_json(value, "fuzz input");
    } catch (const kosmosg::Error&) {
    }
    (void)io::read_fairseq_checkpoint(std::move(value), "fuzz input");
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for a bad pickle.
  }
  return 0;
}
