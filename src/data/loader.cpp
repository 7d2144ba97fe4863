#include "kosmosg/data/loader.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <numeric>
#include <optional>
#include <thread>

#include "data/internal.h"
#include "kosmosg/error.h"

namespace kosmosg::data {
namespace {

constexpr const char* kLoaderWhere = "data loader";
// Domain tags keep the generators of batch choice, permutations and samples apart.
constexpr uint64_t kBatchDomain = 1, kPermutationDomain = 2, kSampleDomain = 3;

struct Item {
  enum class State { Queued, Running, Done };
  size_t source = 0;
  int64_t index = 0;
  uint64_t seed = 0;
  State state = State::Queued;
  std::optional<Sample> sample;
  std::string error;
  bool filtered = false;  // left out by a filter rather than unreadable
};

// A rank's share of a source's epoch permutation: the elements i with i % world == rank.
int64_t rank_share(int64_t size, int64_t rank, int64_t world) {
  return size > rank ? (size - rank + world - 1) / world : 0;
}

template <typename T>
T state_value(const nlohmann::json& state, const std::string& key, const std::string& what = "loader state") {
  const auto it = state.find(key);
  if (it == state.end()) fail(kLoaderWhere, what + " has no '" + key + "'");
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(kLoaderWhere, what + ": '" + key + "' is " + it->dump() + ", of the wrong type");
  }
}

}  // namespace

struct Loader::Impl {
  // A source's walk through its epochs: `consumed` counts the stream positions taken so far
  // (position p is element p % share of epoch p / share of this rank's share of the permutations).
  struct Walk {
    int64_t share = 0;
    int64_t consumed = 0;
    int64_t consecutive_failures = 0;
    int64_t permutation_epoch = -1;
    std::vector<int64_t> permutation;
    std::deque<std::shared_ptr<Item>> pending;  // positions consumed, consumed + 1, ... already created
  };

  struct Saved;
  Saved parse(const nlohmann::json& state) const;
  void reposition(const std::vector<int64_t>& consumed, int64_t batch_count, const LoaderStats& restored);

  LoaderOptions options;
  std::vector<std::unique_ptr<Source>> sources;
  std::vector<double> cumulative;  // running sum of the weights
  std::vector<Walk> walks;
  int64_t batches = 0;
  LoaderStats stats;

  std::mutex mutex;
  std::condition_variable work_ready, work_done;
  std::deque<std::shared_ptr<Item>> tasks;
  bool stopping = false;
  std::vector<std::thread> threads;

  size_t choose_source(int64_t batch) const {
    // Each rank draws its own source for a batch, as each official worker does.
    std::mt19937_64 rng(
        mix_seeds({kBatchDomain, options.seed, static_cast<uint64_t>(options.rank), static_cast<uint64_t>(batch)}));
    const double u = detail::uniform(rng) * cumulative.back();
    size_t last = 0;
    for (size_t s = 0; s < sources.size(); ++s) {
      if (options.sources[s].weight <= 0) continue;
      if (u < cumulative[s]) return s;
      last = s;
    }
    return last;  // only reached through rounding at the very top
  }

  std::shared_ptr<Item> make_item(size_t s, int64_t position) {
    Walk& walk = walks[s];
    const int64_t epoch = position / walk.share, cursor = position % walk.share;
    if (walk.permutation_epoch != epoch) {
      walk.permutation.resize(static_cast<size_t>(sources[s]->size()));
      std::iota(walk.permutation.begin(), walk.permutation.end(), int64_t{0});
      std::mt19937_64 rng(mix_seeds({kPermutationDomain, options.seed, s, static_cast<uint64_t>(epoch)}));
      for (size_t i = walk.permutation.size(); i > 1; --i)
        std::swap(walk.permutation[i - 1], walk.permutation[detail::uniform_below(rng, i)]);
      walk.permutation_epoch = epoch;
    }
    auto item = std::make_shared<Item>();
    item->source = s;
    item->index = walk.permutation[static_cast<size_t>(options.rank + cursor * options.world_size)];
    item->seed = mix_seeds({kSampleDomain, options.seed, s, static_cast<uint64_t>(epoch),
                              static_cast<uint64_t>(item->index)});
    return item;
  }

  void run(Item& item) const {
    std::mt19937_64 rng(item.seed);
    try {
      item.sample = sources[item.source]->prepare(item.index, rng, options.sample);
      item.sample->seed = item.seed;
    } catch (const FilteredOut& e) {
      item.error = e.what();
      item.filtered = true;
    } catch (const std::exception& e) {
      item.error = e.what();
    }
  }

  void worker() {
    for (;;) {
      std::shared_ptr<Item> item;
      {
        std::unique_lock<std::mutex> lock(mutex);
        work_ready.wait(lock, [&] { return stopping || !tasks.empty(); });
        if (stopping) return;
        item = std::move(tasks.front());
        tasks.pop_front();
        if (item->state != Item::State::Queued) continue;  // the caller took it over
        item->state = Item::State::Running;
      }
      run(*item);
      {
        std::lock_guard<std::mutex> lock(mutex);
        item->state = Item::State::Done;
      }
      work_done.notify_all();
    }
  }

  // Queues the samples the next few batches will most likely need, so that the workers stay busy.
  void schedule_ahead() {
    if (options.workers == 0) return;
    const int64_t ahead = std::max<int64_t>(2, (2 * options.workers + options.batch_size - 1) / options.batch_size);
    std::vector<size_t> need(sources.size(), 0);
    for (int64_t k = batches; k < batches + ahead; ++k) need[choose_source(k)] += static_cast<size_t>(options.batch_size);
    bool queued = false;
    for (size_t s = 0; s < sources.size(); ++s) {
      Walk& walk = walks[s];
      while (walk.pending.size() < need[s]) {
        auto item = make_item(s, walk.consumed + static_cast<int64_t>(walk.pending.size()));
        walk.pending.push_back(item);
        std::lock_guard<std::mutex> lock(mutex);
        tasks.push_back(std::move(item));
        queued = true;
      }
    }
    if (queued) work_ready.notify_all();
  }

  // The prepared (or failed) item at source s's next position.
  std::shared_ptr<Item> take(size_t s) {
    Walk& walk = walks[s];
    if (walk.pending.empty()) walk.pending.push_back(make_item(s, walk.consumed));
    auto item = std::move(walk.pending.front());
    walk.pending.pop_front();
    ++walk.consumed;
    bool claimed = false;
    {
      std::unique_lock<std::mutex> lock(mutex);
      if (item->state == Item::State::Queued) {
        item->state = Item::State::Running;
        claimed = true;
      } else {
        work_done.wait(lock, [&] { return item->state == Item::State::Done; });
      }
    }
    if (claimed) run(*item);
    return item;
  }

  void count(const Item& item) {
    const Source& source = *sources[item.source];
    Walk& walk = walks[item.source];
    ++stats.samples_read;
    if (item.sample) {
      walk.consecutive_failures = 0;
      return;
    }
    if (item.filtered) {
      ++stats.samples_filtered;
      spdlog::debug("[data] {}: filtered record {}: {}", source.name(), item.index, item.error);
    } else {
      ++stats.samples_failed;
      spdlog::warn("[data] {}: skipped record {}: {}", source.name(), item.index, item.error);
    }
    if (++walk.consecutive_failures >= walk.share)
      fail(kLoaderWhere, "source '" + source.name() + "': none of the " + std::to_string(walk.share) +
                       " records of a whole epoch could be used; the last error: " + item.error);
    if (stats.samples_read >= 20 &&
        static_cast<double>(stats.samples_failed) > options.max_failure_fraction * static_cast<double>(stats.samples_read))
      fail(kLoaderWhere, std::to_string(stats.samples_failed) + " of the " + std::to_string(stats.samples_read) +
                       " samples read so far failed, more than max_failure_fraction " +
                       std::to_string(options.max_failure_fraction) + " allows; the last, from '" + source.name() +
                       "': " + item.error);
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stopping = true;
      tasks.clear();
    }
    work_ready.notify_all();
    for (auto& t : threads) t.join();
    threads.clear();
  }
};

Loader::Loader(LoaderOptions options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  if (options.sources.empty()) fail(kLoaderWhere, "no data sources given, expected at least one");
  if (!options.sample.tokenizer && is_kosmosg_stage(options.sample.stage))
    fail(kLoaderWhere, std::string("no tokenizer given in the sample options, which the ") + stage_name(options.sample.stage) +
                     " stage needs");
  if (options.batch_size < 1) fail(kLoaderWhere, "batch size " + std::to_string(options.batch_size) + " must be at least 1");
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size)
    fail(kLoaderWhere, "rank " + std::to_string(options.rank) + " of world size " + std::to_string(options.world_size) +
                     ", expected 0 <= rank < world size");
  if (options.workers < 0) fail(kLoaderWhere, "workers is " + std::to_string(options.workers) + ", expected >= 0");
  if (!(options.max_failure_fraction >= 0 && options.max_failure_fraction <= 1))
    fail(kLoaderWhere, "max_failure_fraction " + std::to_string(options.max_failure_fraction) + " must be in [0, 1]");
  double total = 0;
  for (const auto& spec : options.sources) {
    if (!std::isfinite(spec.weight) || spec.weight < 0)
      fail(kLoaderWhere, spec.path + ": weight " + std::to_string(spec.weight) + " must be a finite number >= 0");
    m.sources.push_back(open_source(spec));
    total += spec.weight;
    m.cumulative.push_back(total);
    Impl::Walk walk;
    const int64_t size = m.sources.back()->size();
    walk.share = rank_share(size, options.rank, options.world_size);
    if (walk.share == 0 && spec.weight > 0)
      fail(kLoaderWhere, spec.path + ": " + std::to_string(size) + " records, too few for rank " +
                       std::to_string(options.rank) + " of " + std::to_string(options.world_size) + " to get any");
    m.walks.push_back(std::move(walk));
  }
  if (total <= 0) fail(kLoaderWhere, "every data source has weight 0, expected at least one positive weight");
  m.options = std::move(options);
  for (int64_t i = 0; i < m.options.workers; ++i) m.threads.emplace_back([&m] { m.worker(); });
}

Loader::~Loader() { impl_->stop_workers(); }

Batch Loader::next() {
  Impl& m = *impl_;
  const size_t s = m.choose_source(m.batches);
  m.schedule_ahead();
  std::vector<Sample> samples;
  while (static_cast<int64_t>(samples.size()) < m.options.batch_size) {
    const auto item = m.take(s);
    m.count(*item);
    if (item->sample) samples.push_back(std::move(*item->sample));
  }
  ++m.batches;
  m.schedule_ahead();
  return collate(samples, m.sources[s]->name());
}

nlohmann::json Loader::state() const {
  const Impl& m = *impl_;
  nlohmann::json sources = nlohmann::json::array();
  for (size_t s = 0; s < m.sources.size(); ++s) {
    const auto& walk = m.walks[s];
    const int64_t share = std::max<int64_t>(walk.share, 1);
    sources.push_back({{"name", m.sources[s]->name()},
                       {"size", m.sources[s]->size()},
                       {"epoch", walk.consumed / share},
                       {"cursor", walk.consumed % share}});
  }
  return {{"batches", m.batches},
          {"seed", m.options.seed},
          {"rank", m.options.rank},
          {"world_size", m.options.world_size},
          {"sources", sources},
          {"stats", {{"samples_read", m.stats.samples_read}, {"samples_failed", m.stats.samples_failed},
                     {"samples_filtered", m.stats.samples_filtered}}}};
}

// A saved loader position, checked against this loader's seed and sources.
struct Loader::Impl::Saved {
  int64_t batches = 0, rank = 0, world_size = 1;
  LoaderStats stats;
  std::vector<std::pair<int64_t, int64_t>> epoch_cursor;  // per source
};

Loader::Impl::Saved Loader::Impl::parse(const nlohmann::json& state) const {
  if (!state.is_object()) fail(kLoaderWhere, "loader state is " + state.dump() + ", expected an object");
  const auto seed = state_value<uint64_t>(state, "seed");
  if (seed != options.seed)
    fail(kLoaderWhere, "loader state was saved with seed " + std::to_string(seed) + ", this loader has seed " +
                     std::to_string(options.seed));
  Saved saved;
  saved.rank = state_value<int64_t>(state, "rank");
  saved.world_size = state_value<int64_t>(state, "world_size");
  if (saved.world_size < 1 || saved.rank < 0 || saved.rank >= saved.world_size)
    fail(kLoaderWhere, "loader state names rank " + std::to_string(saved.rank) + " of world size " +
                     std::to_string(saved.world_size));
  const auto saved_sources = state_value<nlohmann::json>(state, "sources");
  if (!saved_sources.is_array() || saved_sources.size() != sources.size())
    fail(kLoaderWhere, "loader state has " + std::to_string(saved_sources.is_array() ? saved_sources.size() : 0) +
                     " sources, this loader has " + std::to_string(sources.size()));
  for (size_t s = 0; s < sources.size(); ++s) {
    const std::string what = "loader state source " + std::to_string(s);
    const auto name = state_value<std::string>(saved_sources[s], "name", what);
    const auto size = state_value<int64_t>(saved_sources[s], "size", what);
    if (name != sources[s]->name() || size != sources[s]->size())
      fail(kLoaderWhere, what + " is '" + name + "' with " + std::to_string(size) + " records, this loader's is '" +
                       sources[s]->name() + "' with " + std::to_string(sources[s]->size()));
    const auto epoch = state_value<int64_t>(saved_sources[s], "epoch", what);
    const auto cursor = state_value<int64_t>(saved_sources[s], "cursor", what);
    const int64_t share = rank_share(size, saved.rank, saved.world_size);
    if (epoch < 0 || cursor < 0 || (share > 0 && cursor >= share) || (share == 0 && (epoch | cursor) != 0))
      fail(kLoaderWhere, what + " ('" + name + "'): epoch " + std::to_string(epoch) + " cursor " + std::to_string(cursor) +
                       " is outside rank " + std::to_string(saved.rank) + "'s " + std::to_string(share) +
                       " records per epoch");
    saved.epoch_cursor.emplace_back(epoch, cursor);
  }
  const auto stats = state_value<nlohmann::json>(state, "stats");
  saved.batches = state_value<int64_t>(state, "batches");
  if (saved.batches < 0) fail(kLoaderWhere, "loader state has " + std::to_string(saved.batches) + " batches, expected >= 0");
  saved.stats = {state_value<int64_t>(stats, "samples_read", "loader state stats"),
                 state_value<int64_t>(stats, "samples_failed", "loader state stats"),
                 stats.value("samples_filtered", int64_t{0})};
  return saved;
}

void Loader::Impl::reposition(const std::vector<int64_t>& consumed, int64_t batch_count, const LoaderStats& restored) {
  // Samples prepared ahead belong to the old position; workers finishing one write into an item
  // nobody holds any more.
  {
    std::lock_guard<std::mutex> lock(mutex);
    tasks.clear();
  }
  for (size_t s = 0; s < sources.size(); ++s) {
    walks[s].pending.clear();
    walks[s].consumed = consumed[s];
    walks[s].consecutive_failures = 0;
  }
  batches = batch_count;
  stats = restored;
}

void Loader::restore(const nlohmann::json& state) {
  Impl& m = *impl_;
  const Impl::Saved saved = m.parse(state);
  if (saved.rank != m.options.rank || saved.world_size != m.options.world_size)
    fail(kLoaderWhere, "loader state was saved by rank " + std::to_string(saved.rank) + " of " +
                     std::to_string(saved.world_size) + ", this loader is rank " + std::to_string(m.options.rank) +
                     " of " + std::to_string(m.options.world_size));
  std::vector<int64_t> consumed;
  for (size_t s = 0; s < m.sources.size(); ++s)
    consumed.push_back(saved.epoch_cursor[s].first * m.walks[s].share + saved.epoch_cursor[s].second);
  m.reposition(consumed, saved.batches, saved.stats);
}

void Loader::restore_from_ranks(const std::vector<nlohmann::json>& states) {
  Impl& m = *impl_;
  if (states.empty()) fail(kLoaderWhere, "no loader state to restore");
  std::vector<Impl::Saved> saved;
  for (const auto& state : states) saved.push_back(m.parse(state));
  const int64_t old_world = saved.front().world_size;
  for (size_t r = 0; r < saved.size(); ++r)
    if (saved[r].world_size != old_world || saved[r].rank != static_cast<int64_t>(r))
      fail(kLoaderWhere, "loader state " + std::to_string(r) + " of " + std::to_string(saved.size()) + " is rank " +
                       std::to_string(saved[r].rank) + " of " + std::to_string(saved[r].world_size) +
                       ", expected one state per rank in rank order");
  if (static_cast<int64_t>(saved.size()) != old_world)
    fail(kLoaderWhere, std::to_string(saved.size()) + " loader states for a run of " + std::to_string(old_world) + " ranks");
  if (old_world == m.options.world_size) return restore(states[static_cast<size_t>(m.options.rank)]);

  // Another number of ranks: in each source, every element below the first one some old rank had
  // not reached in the earliest epoch any old rank was in has been read; all ranks go on from there.
  std::vector<int64_t> consumed;
  for (size_t s = 0; s < m.sources.size(); ++s) {
    const int64_t size = m.sources[s]->size();
    int64_t epoch = -1, first_unread = size;
    for (int64_t r = 0; r < old_world; ++r) {
      if (rank_share(size, r, old_world) == 0) continue;
      const auto [e, cursor] = saved[static_cast<size_t>(r)].epoch_cursor[s];
      const int64_t unread = r + cursor * old_world;
      if (epoch < 0 || e < epoch) {
        epoch = e;
        first_unread = unread;
      } else if (e == epoch) {
        first_unread = std::min(first_unread, unread);
      }
    }
    const int64_t rank = m.options.rank, world = m.options.world_size;
    const int64_t cursor = first_unread > rank ? (first_unread - rank + world - 1) / world : 0;
    consumed.push_back(std::max<int64_t>(epoch, 0) * m.walks[s].share + cursor);
  }
  int64_t batches = 0;
  LoaderStats total;
  for (const auto& sv : saved) {
    batches = std::max(batches, sv.batches);
    total.samples_read += sv.stats.samples_read;
    total.samples_failed += sv.stats.samples_failed;
    total.samples_filtered += sv.stats.samples_filtered;
  }
  // The counts are global figures now: rank 0 carries them so that their sum over ranks stays right.
  m.reposition(consumed, batches, m.options.rank == 0 ? total : LoaderStats{});
}

const LoaderStats& Loader::stats() const { return impl_->stats; }

const std::vector<std::unique_ptr<Source>>& Loader::sources() const { return impl_->sources; }

}  // namespace kosmosg::data
