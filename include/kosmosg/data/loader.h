#pragma once
// The training data loader: weighted mixing of sources (one source per batch), seeded per-epoch
// permutations sharded over ranks, skip-and-count of bad records, threads preparing ahead, and a
// JSON position from which a resumed run continues with bit-identical batches.
#include <initializer_list>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <vector>

#include "kosmosg/data/sample.h"
#include "kosmosg/data/source.h"

namespace kosmosg::data {

// A splitmix64 hash of `values`: the seed of every generator the loader uses, and of the
// trainer's per-update draws.
uint64_t mix_seeds(std::initializer_list<uint64_t> values);

struct LoaderOptions {
  std::vector<SourceSpec> sources;
  SampleOptions sample;
  int64_t batch_size = 1;
  uint64_t seed = 0;
  int64_t rank = 0, world_size = 1;   // rank r takes the elements i of each epoch permutation with i % world == r
  int64_t workers = 0;                // threads that decode/preprocess ahead (0: in the caller's thread)
  double max_failure_fraction = 0.1;  // an Error when more than this fraction of read samples failed (after 20 reads)
};

// Records read; of those, unreadable ones (failed, which count toward max_failure_fraction) and
// ones the filters leave out (filtered, which do not).
struct LoaderStats {
  int64_t samples_read = 0, samples_failed = 0, samples_filtered = 0;
};

// Batch k comes from the source drawn by weight with an RNG seeded by (seed, k); within a source,
// samples follow the rank's share of the epoch permutations, failed ones skipped. Batches are
// therefore the same with any number of workers, and after restore().
class Loader {
 public:
  explicit Loader(LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  Batch next();
  // Position after the last batch next() returned (prefetched samples do not count):
  // {batches, seed, rank, world_size, sources: [{name, size, epoch, cursor}], stats}.
  nlohmann::json state() const;
  // Continues exactly at the next batch of a saved state; errors name what does not fit.
  void restore(const nlohmann::json& state);
  // Continues from the states of every rank of a run, in rank order: exactly when the number of
  // ranks is the same; otherwise each source goes on from the first element of the earliest epoch
  // that some old rank had not read, so that nothing is skipped (and only what ranks had read
  // ahead of the slowest is read again).
  void restore_from_ranks(const std::vector<nlohmann::json>& states);
  const LoaderStats& stats() const;
  // The opened sources, in the order of LoaderOptions::sources.
  const std::vector<std::unique_ptr<Source>>& sources() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kosmosg::data
