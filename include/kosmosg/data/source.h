#pragma once
// Training data sources: JSONL manifests and the official TSV folders (reference §7), each a set
// of records addressable by index.
#include <cstdint>
#include <memory>
#include <random>
#include <string>

#include "kosmosg/data/sample.h"
#include "kosmosg/error.h"

namespace kosmosg::data {

// A source of records addressable by index; prepare() is pure given (index, rng), so loading is
// deterministic under threads, and safe to call from several threads at once.
class Source {
 public:
  virtual ~Source() = default;
  virtual const std::string& name() const = 0;
  virtual int64_t size() const = 0;
  // Prepares record `index`; `rng` is this sample's own generator (seeded from seed, epoch, index)
  // for the official per-sample random choices. Throws kosmosg::Error (naming file and line) when
  // the record cannot be used (unreadable, filtered out, or unfit for the stage).
  virtual Sample prepare(int64_t index, std::mt19937_64& rng, const SampleOptions& options) const = 0;
};

// A record the official filters or the stage leave out (caption too long, image too small, an
// image record in the align stage, no target in the instruct stage): skipped and counted apart
// from records that cannot be read.
struct FilteredOut : Error {
  using Error::Error;
};

// "[KIND:]PATH[:WEIGHT]" as the command line takes it; KIND is one of jsonl, laion,
// instructpix2pix, openimages; WEIGHT a non-negative number (default 1).
struct SourceSpec {
  std::string kind, path;
  double weight = 1;
};
SourceSpec parse_source_spec(const std::string& spec);

// Opens a .jsonl manifest file or an official folder with json/train.json, indexing every record.
// A folder's kind is `spec.kind`, else guessed from its name (laion, pix2pix/ip2p, openimage);
// otherwise the error asks for KIND:DIR.
std::unique_ptr<Source> open_source(const SourceSpec& spec);

}  // namespace kosmosg::data
