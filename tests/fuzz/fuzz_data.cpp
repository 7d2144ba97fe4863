// libFuzzer harness: the trainer's data sources. The first byte picks the source kind (a JSONL
// manifest, or a LAION, InstructPix2Pix or OpenImages TSV shard listed by its folder's
// json/train.json) and the stage; the rest is the manifest or the shard. Each record is prepared
// as the loader would. No Kosmos-G tokenizer is given: it needs SentencePiece, which cannot share
// a sanitized process with LibTorch (see CMakeLists.txt), so the Kosmos-G stages stop where a
// record needs tokenising; fuzz_prompt_layout covers what follows.
#include <ATen/ATen.h>

#include <random>

#include "fuzz_support.h"
#include "kosmosg/data/source.h"
#include "kosmosg/error.h"
#include "kosmosg/io/image.h"

namespace data = kosmosg::data;
namespace fuzz = kosmosg::fuzz;

namespace {

struct Kind {
  const char* name;
  const char* shard;  // where the rest of the input goes inside the scratch folder
};

const Kind kKinds[] = {
    {"jsonl", "jsonl/manifest.jsonl"},
    {"laion", "laion/shard.tsv"},
    {"instructpix2pix", "instructpix2pix/data/shard.tsv"},
    {"openimages", "openimages/data/shard.tsv"},
};
const data::StageKind kStages[] = {data::StageKind::Vae, data::StageKind::T2I, data::StageKind::LM,
                                   data::StageKind::Align, data::StageKind::Instruct};
constexpr int64_t kMaxRecords = 8;

// The folders' fixed parts: each TSV folder lists its one shard, and manifests may name image.png.
void prepare_folders() {
  for (const char* kind : {"laion", "instructpix2pix", "openimages"})
    fuzz::write_file(std::string(kind) + "/json/train.json", std::string(R"([{"source": ["shard.tsv"]}])"));
  std::filesystem::create_directories(fuzz::scratch_dir() / "jsonl");
  kosmosg::io::write_png((fuzz::scratch_dir() / "jsonl" / "image.png").string(), at::full({8, 8, 3}, 200, at::kByte));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool prepared = (prepare_folders(), true);
  (void)prepared;
  if (size == 0) return 0;
  const Kind& kind = kKinds[data[0] % 4];
  data::SampleOptions options;
  options.stage = kStages[(data[0] / 4) % 5];
  options.image_size = 32;
  options.target_size = 64;
  const std::string shard = fuzz::write_file(kind.shard, data + 1, size - 1);
  try {
    data::SourceSpec spec;
    spec.kind = kind.name;
    spec.path = kind.name == std::string("jsonl") ? shard : (fuzz::scratch_dir() / kind.name).string();
    const auto source = data::open_source(spec);
    for (int64_t i = 0; i < std::min(source->size(), kMaxRecords); ++i) {
      std::mt19937_64 rng(static_cast<uint64_t>(i));
      try {
        (void)source->prepare(i, rng, options);
      } catch (const kosmosg::Error&) {
        // One bad record is refused on its own; the next is still read.
      }
    }
  } catch (const kosmosg::Error&) {
    // A clear refusal is the documented outcome for a bad manifest or shard.
  }
  return 0;
}
