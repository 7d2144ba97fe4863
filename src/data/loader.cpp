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

constexpr const char* kWhere = "data loader";
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

template <typename T>
T state_value(const nlohmann::json& state, const std::string& key, const std::string& what = "loader state") {
  const auto it = state.find(key);
  if (it == state.end()) fail(kWhere, what + " has no '" + key + "'");
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    fail(kWhere, what + ": '" + key + "' is " + it->dump() + ", of the wrong type");
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
    std::mt19937_64 rng(mix_seeds({kBatchDomain, options.seed, static_cast<uint64_t>(batch)}));
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
      fail(kWhere, "source '" + source.name() + "': none of the " + std::to_string(walk.share) +
                       " records of a whole epoch could be used; the last error: " + item.error);
    if (stats.samples_read >= 20 &&
        static_cast<double>(stats.samples_failed) > options.max_failure_fraction * static_cast<double>(stats.samples_read))
      fail(kWhere, std::to_string(stats.samples_failed) + " of the " + std::to_string(stats.samples_read) +
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
  if (options.sources.empty()) fail(kWhere, "no data sources given, expected at least one");
  if (!options.sample.tokenizer) fail(kWhere, "no tokenizer given in the sample options");
  if (options.batch_size < 1) fail(kWhere, "batch size " + std::to_string(options.batch_size) + " must be at least 1");
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size)
    fail(kWhere, "rank " + std::to_string(options.rank) + " of world size " + std::to_string(options.world_size) +
                     ", expected 0 <= rank < world size");
  if (options.workers < 0) fail(kWhere, "workers is " + std::to_string(options.workers) + ", expected >= 0");
  if (!(options.max_failure_fraction >= 0 && options.max_failure_fraction <= 1))
    fail(kWhere, "max_failure_fraction " + std::to_string(options.max_failure_fraction) + " must be in [0, 1]");
  double total = 0;
  for (const auto& spec : options.sources) {
    if (!std::isfinite(spec.weight) || spec.weight < 0)
      fail(kWhere, spec.path + ": weight " + std::to_string(spec.weight) + " must be a finite number >= 0");
    m.sources.push_back(open_source(spec));
    total += spec.weight;
    m.cumulative.push_back(total);
    Impl::Walk walk;
    const int64_t size = m.sources.back()->size();
    walk.share = size > options.rank ? (size - options.rank + options.world_size - 1) / options.world_size : 0;
    if (walk.share == 0 && spec.weight > 0)
      fail(kWhere, spec.path + ": " + std::to_string(size) + " records, too few for rank " +
                       std::to_string(options.rank) + " of " + std::to_string(options.world_size) + " to get any");
    m.walks.push_back(std::move(walk));
  }
  if (total <= 0) fail(kWhere, "every data source has weight 0, expected at least one positive weight");
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

void Loader::restore(const nlohmann::json& state) {
  Impl& m = *impl_;
  if (!state.is_object()) fail(kWhere, "loader state is " + state.dump() + ", expected an object");
  const auto seed = state_value<uint64_t>(state, "seed");
  if (seed != m.options.seed)
    fail(kWhere, "loader state was saved with seed " + std::to_string(seed) + ", this loader has seed " +
                     std::to_string(m.options.seed));
  const auto rank = state_value<int64_t>(state, "rank"), world = state_value<int64_t>(state, "world_size");
  if (rank != m.options.rank || world != m.options.world_size)
    fail(kWhere, "loader state was saved by rank " + std::to_string(rank) + " of " + std::to_string(world) +
                     ", this loader is rank " + std::to_string(m.options.rank) + " of " +
                     std::to_string(m.options.world_size));
  const auto sources = state_value<nlohmann::json>(state, "sources");
  if (!sources.is_array() || sources.size() != m.sources.size())
    fail(kWhere, "loader state has " + std::to_string(sources.is_array() ? sources.size() : 0) +
                     " sources, this loader has " + std::to_string(m.sources.size()));
  std::vector<int64_t> consumed;
  for (size_t s = 0; s < m.sources.size(); ++s) {
    const std::string what = "loader state source " + std::to_string(s);
    const auto name = state_value<std::string>(sources[s], "name", what);
    const auto size = state_value<int64_t>(sources[s], "size", what);
    if (name != m.sources[s]->name() || size != m.sources[s]->size())
      fail(kWhere, what + " is '" + name + "' with " + std::to_string(size) + " records, this loader's is '" +
                       m.sources[s]->name() + "' with " + std::to_string(m.sources[s]->size()));
    const auto epoch = state_value<int64_t>(sources[s], "epoch", what);
    const auto cursor = state_value<int64_t>(sources[s], "cursor", what);
    const int64_t share = m.walks[s].share;
    if (epoch < 0 || cursor < 0 || (share > 0 && cursor >= share) || (share == 0 && (epoch | cursor) != 0))
      fail(kWhere, what + " ('" + name + "'): epoch " + std::to_string(epoch) + " cursor " + std::to_string(cursor) +
                       " is outside this rank's " + std::to_string(share) + " records per epoch");
    consumed.push_back(epoch * share + cursor);
  }
  const auto stats = state_value<nlohmann::json>(state, "stats");
  const auto batches = state_value<int64_t>(state, "batches");
  if (batches < 0) fail(kWhere, "loader state has " + std::to_string(batches) + " batches, expected >= 0");
  LoaderStats restored{state_value<int64_t>(stats, "samples_read", "loader state stats"),
                       state_value<int64_t>(stats, "samples_failed", "loader state stats"),
                       stats.value("samples_filtered", int64_t{0})};

  // Samples prepared ahead belong to the old position; workers finishing one write into an item
  // nobody holds any more.
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    m.tasks.clear();
  }
  for (size_t s = 0; s < m.sources.size(); ++s) {
    m.walks[s].pending.clear();
    m.walks[s].consumed = consumed[s];
    m.walks[s].consecutive_failures = 0;
  }
  m.batches = batches;
  m.stats = restored;
}

const LoaderStats& Loader::stats() const { return impl_->stats; }

const std::vector<std::unique_ptr<Source>>& Loader::sources() const { return impl_->sources; }

}  // namespace kosmosg::data
