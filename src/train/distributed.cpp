// c10d's process groups carry the collectives; this file adds what a training job needs around
// them: reading the launcher, a rendezvous that says who is missing, heartbeats so that a failed
// collective names the rank that stopped, and DDP's bucketed gradient all-reduce.
#define USE_C10D_GLOO 1
#include "kosmosg/train/distributed.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>
#include <torch/version.h>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <thread>

#include "kosmosg/error.h"

namespace kosmosg::train {
namespace {

constexpr const char* kWhere = "distributed";

#if TORCH_VERSION_MAJOR >= 2
using Backend = c10d::Backend;
#else
using Backend = c10d::ProcessGroup;
#endif

int64_t parse_count(const char* name, const char* value, int64_t min) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(value, &end, 10);
  if (errno != 0 || end == value || *end != '\0' || v < min || v > (int64_t{1} << 20))
    fail(kWhere, std::string(name) + "=" + value + " is not a count (expected an integer >= " + std::to_string(min) + ")");
  return v;
}

// The first line of an exception's text: c10::Error appends a backtrace.
std::string first_line(const std::exception& e) {
  std::string s = e.what();
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }
std::string text_of(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

class C10dProcessGroup final : public ProcessGroup {
 public:
  C10dProcessGroup(const LaunchInfo& launch, const DistributedOptions& options, const std::string& device)
      : launch_(launch), options_(options) {
    backend_ = options.backend.empty() ? (device.rfind("cuda", 0) == 0 ? "nccl" : "gloo") : options.backend;
    if (backend_ != "gloo" && backend_ != "nccl")
      fail_setting(kWhere, "distributed backend", "{} '" + backend_ + "' is not one (gloo or nccl)");
    store_ = connect_store("rendezvous");
    wait_for_everyone();
    heartbeat_store_ = connect_store("heartbeat");
    heartbeat_thread_ = std::thread([this] { beat(); });
    auto pg_store = c10::make_intrusive<c10d::PrefixStore>(key("pg"), store_);
    try {
      if (backend_ == "gloo") {
        auto o = c10d::ProcessGroupGloo::Options::create(options.timeout);
        if (const char* iface = std::getenv("GLOO_SOCKET_IFNAME"); iface && *iface)
          o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
        else if (is_loopback(launch.master_addr))
          o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        else
          o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        backend_impl_ = c10::make_intrusive<c10d::ProcessGroupGloo>(pg_store, launch.rank, launch.world_size, o);
      } else {
#ifdef USE_C10D_NCCL
        auto o = c10d::ProcessGroupNCCL::Options::create();
        o->timeout = options.timeout;
        backend_impl_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(pg_store, launch.rank, launch.world_size, o);
#else
        fail_setting(kWhere, "distributed backend",
                     "{} nccl needs a LibTorch built with CUDA and NCCL; this build (LibTorch " +
                         std::string(TORCH_VERSION) + ") has only gloo: choose gloo or use the pip LibTorch");
#endif
      }
    } catch (const Error&) {
      stop_heartbeat();
      throw;
    } catch (const std::exception& e) {
      stop_heartbeat();
      fail(kWhere, "rank " + std::to_string(launch.rank) + " could not connect the " + backend_ +
                       " process group: " + first_line(e));
    }
  }

  ~C10dProcessGroup() override { stop_heartbeat(); }

  int64_t rank() const override { return launch_.rank; }
  int64_t world_size() const override { return launch_.world_size; }
  const std::string& backend() const override { return backend_; }

  void broadcast(const std::vector<at::Tensor>& tensors, int64_t root) override {
    // Coalesced: consecutive tensors of one dtype and device go out as one flat buffer.
    size_t begin = 0;
    while (begin < tensors.size()) {
      size_t end = begin;
      int64_t bytes = 0;
      while (end < tensors.size() && tensors[end].scalar_type() == tensors[begin].scalar_type() &&
             tensors[end].device() == tensors[begin].device() &&
             (end == begin || bytes + tensors[end].nbytes() <= static_cast<size_t>(options_.bucket_bytes))) {
        bytes += static_cast<int64_t>(tensors[end].nbytes());
        ++end;
      }
      std::vector<at::Tensor> flat_parts;
      for (size_t i = begin; i < end; ++i) flat_parts.push_back(tensors[i].detach().reshape({-1}));
      std::vector<at::Tensor> flat{at::cat(flat_parts)};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      run("broadcast", [&] { return backend_impl_->broadcast(flat, o); });
      int64_t offset = 0;
      torch::NoGradGuard no_grad;
      for (size_t i = begin; i < end; ++i) {
        const int64_t n = tensors[i].numel();
        tensors[i].detach().copy_(flat[0].narrow(0, offset, n).view_as(tensors[i]));
        offset += n;
      }
      begin = end;
    }
  }

  void all_reduce_sum(std::vector<double>& values) override {
    if (values.empty()) return;
    const auto device = backend_ == "nccl" ? c10::Device(c10::kCUDA, launch_.local_rank) : c10::Device(c10::kCPU);
    std::vector<at::Tensor> t{at::tensor(values, at::TensorOptions().dtype(at::kDouble)).to(device)};
    run("all-reduce", [&] { return backend_impl_->allreduce(t, c10d::AllreduceOptions()); });
    const at::Tensor cpu = t[0].cpu();
    for (size_t i = 0; i < values.size(); ++i) values[i] = cpu[static_cast<int64_t>(i)].item<double>();
  }

  std::vector<std::string> all_gather_text(const std::string& text) override {
    const std::string prefix = key("gather/" + std::to_string(gather_count_++) + "/");
    std::vector<std::string> out;
    try {
      store_->set(prefix + std::to_string(launch_.rank), bytes_of(text));
      for (int64_t r = 0; r < launch_.world_size; ++r) out.push_back(text_of(store_->get(prefix + std::to_string(r))));
    } catch (const std::exception& e) {
      fail_collective("gathering each rank's state", e);
    }
    return out;
  }

  void barrier() override {
    run("barrier", [&] { return backend_impl_->barrier(c10d::BarrierOptions()); });
  }

  std::function<void()> start_all_reduce_sum(at::Tensor& flat) override {
    std::vector<at::Tensor> tensors{flat};
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = backend_impl_->allreduce(tensors, c10d::AllreduceOptions());
    } catch (const std::exception& e) {
      fail_collective("gradient all-reduce", e);
    }
    return [this, work] {
      try {
        work->wait(options_.timeout);
      } catch (const std::exception& e) {
        fail_collective("gradient all-reduce", e);
      }
    };
  }

  void heartbeat(int64_t update) override {
    progress_ = update;
    try {
      store_->set(key("progress/") + std::to_string(launch_.rank), bytes_of(std::to_string(update)));
    } catch (const std::exception& e) {
      fail_collective("reporting progress", e);
    }
  }

  [[noreturn]] void fail_collective(const std::string& what, const std::exception& error) override {
    const std::string cause = first_line(error);
    std::string diagnosis;
    try {
      diagnosis = diagnose();
    } catch (const std::exception&) {
      diagnosis = launch_.rank == 0 ? "the other ranks cannot be reached"
                                    : "rank 0, which serves the rendezvous at " + address() +
                                          ", stopped responding";
    }
    fail(kWhere, "rank " + std::to_string(launch_.rank) + ": " + what + " failed: " + diagnosis + " (" + backend_ +
                     ": " + cause + ")");
  }

 private:
  std::string address() const { return launch_.master_addr + ":" + std::to_string(launch_.master_port); }
  // Store keys of this attempt of the job.
  std::string key(const std::string& name) const {
    return "kosmosg/attempt_" + std::to_string(launch_.restart_count) + "/" + name;
  }

  c10::intrusive_ptr<c10d::TCPStore> connect_store(const std::string& purpose) {
#if TORCH_VERSION_MAJOR < 2
    // A torch 2.x agent's store speaks a newer protocol (its query codes moved), and a 1.x client
    // hangs on its first reply instead of failing.
    if (launch_.agent_store)
      fail(kWhere, "torchrun's agent serves the rendezvous store (TORCHELASTIC_USE_AGENT_STORE=True), which this "
                   "build's LibTorch " + std::string(TORCH_VERSION) + " cannot talk to: start torchrun with "
                   "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (rank 0 then serves the store itself), use scripts/launch.sh, "
                   "or build with KOSMOSG_LIBTORCH=pip");
#endif
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(launch_.master_port);
    o.isServer = launch_.rank == 0 && purpose == "rendezvous" && !launch_.agent_store;
    o.waitWorkers = false;
    o.timeout = options_.timeout;
    try {
      return c10::make_intrusive<c10d::TCPStore>(launch_.master_addr, o);
    } catch (const std::exception& e) {
      if (o.isServer)
        fail(kWhere, "rank 0 cannot serve the rendezvous on " + address() + " (is the port in use? set MASTER_PORT): " +
                         first_line(e));
      fail(kWhere, "rank " + std::to_string(launch_.rank) + " could not reach the rendezvous at " + address() +
                       " within " + std::to_string(options_.timeout.count() / 1000) +
                       " s: is rank 0 running, and are MASTER_ADDR and MASTER_PORT right? (" + first_line(e) + ")");
    }
  }

  // Every rank announces itself; the rendezvous completes when all have, or fails naming how many.
  void wait_for_everyone() {
    const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
    int64_t joined = 0;
    try {
      store_->set(key("joined/") + std::to_string(launch_.rank), bytes_of("1"));
      joined = store_->add(key("joined"), 1);
      while (joined < launch_.world_size && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        joined = store_->add(key("joined"), 0);
      }
    } catch (const std::exception& e) {
      fail(kWhere, "rank " + std::to_string(launch_.rank) + ": the rendezvous at " + address() + " broke off: " +
                       first_line(e));
    }
    if (joined < launch_.world_size) {
      std::string missing;
      for (int64_t r = 0; r < launch_.world_size; ++r) {
        bool present = false;
        try {
          present = store_->check({key("joined/") + std::to_string(r)});
        } catch (const std::exception&) {
        }
        if (!present) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      }
      fail(kWhere, "the rendezvous at " + address() + " did not complete within " +
                       std::to_string(options_.timeout.count() / 1000) + " s: " + std::to_string(joined) + " of " +
                       std::to_string(launch_.world_size) + " ranks joined (missing: rank " + missing + ")");
    }
  }

  void beat() {
    std::unique_lock<std::mutex> lock(heartbeat_mutex_);
    for (int64_t n = 1;; ++n) {
      try {
        heartbeat_store_->set(key("heartbeat/") + std::to_string(launch_.rank), bytes_of(std::to_string(n)));
      } catch (const std::exception&) {
        return;  // the store is gone (rank 0 stopped); the next collective reports it
      }
      if (heartbeat_stop_cv_.wait_for(lock, kHeartbeatPeriod, [this] { return heartbeat_stopping_; })) return;
    }
  }

  void stop_heartbeat() {
    {
      std::lock_guard<std::mutex> lock(heartbeat_mutex_);
      heartbeat_stopping_ = true;
    }
    heartbeat_stop_cv_.notify_all();
    if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
  }

  // Which ranks stopped beating, and which still beat but lag behind this rank's update.
  std::string diagnose() {
    store_->setTimeout(std::chrono::seconds(5));
    auto read = [&](const std::string& key) -> int64_t {
      if (!store_->check({key})) return -1;
      return std::stoll(text_of(store_->get(key)));
    };
    std::vector<int64_t> before(static_cast<size_t>(launch_.world_size));
    for (int64_t r = 0; r < launch_.world_size; ++r) before[r] = read(key("heartbeat/") + std::to_string(r));
    std::this_thread::sleep_for(kHeartbeatPeriod * 3);
    std::vector<std::string> findings;
    for (int64_t r = 0; r < launch_.world_size; ++r) {
      if (r == launch_.rank) continue;
      const int64_t beat = read(key("heartbeat/") + std::to_string(r));
      const int64_t progress = read(key("progress/") + std::to_string(r));
      const std::string at = progress >= 0 ? " (last at update " + std::to_string(progress + 1) + ")" : "";
      if (beat == before[r])
        findings.push_back("rank " + std::to_string(r) + " stopped responding" + at);
      else if (progress < progress_)
        findings.push_back("rank " + std::to_string(r) + " is alive but hangs" + at + ", this rank is at update " +
                           std::to_string(progress_ + 1));
    }
    if (findings.empty()) return "no other rank was found stopped or behind";
    std::string s;
    for (const auto& f : findings) s += (s.empty() ? "" : "; ") + f;
    return s;
  }

  // Runs a collective to completion, turning its failure into an Error that names the culprit.
  template <typename Start>
  void run(const std::string& what, Start start) {
    try {
      auto work = start();
      work->wait(options_.timeout);
    } catch (const std::exception& e) {
      fail_collective(what, e);
    }
  }

  static constexpr std::chrono::milliseconds kHeartbeatPeriod{500};

  LaunchInfo launch_;
  DistributedOptions options_;
  std::string backend_;
  c10::intrusive_ptr<c10d::TCPStore> store_, heartbeat_store_;
  c10::intrusive_ptr<Backend> backend_impl_;
  int64_t gather_count_ = 0;
  int64_t progress_ = -1;

  std::mutex heartbeat_mutex_;
  std::condition_variable heartbeat_stop_cv_;
  bool heartbeat_stopping_ = false;
  std::thread heartbeat_thread_;
};

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  // The first entry ends at the first comma outside brackets.
  std::string entry;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) break;
    entry.push_back(c);
  }
  const auto open = entry.find('[');
  if (open == std::string::npos) return entry;
  const std::string prefix = entry.substr(0, open);
  std::string range = entry.substr(open + 1, entry.find(']') - open - 1);
  range = range.substr(0, range.find(','));
  return prefix + range.substr(0, range.find('-'));
}

LaunchInfo LaunchInfo::from_environment(const std::function<const char*(const char*)>& getenv_fn) {
  auto get = [&](const char* name) -> const char* {
    const char* v = getenv_fn ? getenv_fn(name) : std::getenv(name);
    return v && *v ? v : nullptr;
  };
  LaunchInfo info;
  const char *rank = nullptr, *world = nullptr, *local_rank = nullptr, *local_world = nullptr;
  if (get("RANK") || get("WORLD_SIZE")) {
    info.launcher = "torchrun";
    rank = get("RANK");
    world = get("WORLD_SIZE");
    local_rank = get("LOCAL_RANK");
    local_world = get("LOCAL_WORLD_SIZE");
    if (!rank || !world) fail(kWhere, "RANK and WORLD_SIZE must be set together (torchrun sets both)");
    if (const char* agent = get("TORCHELASTIC_USE_AGENT_STORE")) info.agent_store = std::string(agent) == "True";
    if (const char* restarts = get("TORCHELASTIC_RESTART_COUNT"))
      info.restart_count = parse_count("TORCHELASTIC_RESTART_COUNT", restarts, 0);
  } else if (get("SLURM_PROCID") && get("SLURM_NTASKS")) {
    info.launcher = "slurm";
    rank = get("SLURM_PROCID");
    world = get("SLURM_NTASKS");
    local_rank = get("SLURM_LOCALID");
    local_world = get("SLURM_NTASKS_PER_NODE");
    if (const char* nodes = get("SLURM_JOB_NODELIST")) info.master_addr = first_slurm_host(nodes);
  } else if (get("OMPI_COMM_WORLD_RANK") && get("OMPI_COMM_WORLD_SIZE")) {
    info.launcher = "openmpi";
    rank = get("OMPI_COMM_WORLD_RANK");
    world = get("OMPI_COMM_WORLD_SIZE");
    local_rank = get("OMPI_COMM_WORLD_LOCAL_RANK");
    local_world = get("OMPI_COMM_WORLD_LOCAL_SIZE");
  } else {
    return info;
  }
  info.rank = parse_count(info.launcher == "slurm" ? "SLURM_PROCID" : info.launcher == "openmpi" ? "OMPI_COMM_WORLD_RANK" : "RANK",
                          rank, 0);
  info.world_size = parse_count(info.launcher == "slurm" ? "SLURM_NTASKS" : info.launcher == "openmpi" ? "OMPI_COMM_WORLD_SIZE" : "WORLD_SIZE",
                                world, 1);
  if (info.rank >= info.world_size)
    fail(kWhere, "rank " + std::to_string(info.rank) + " is not below the world size " + std::to_string(info.world_size));
  info.local_rank = local_rank ? parse_count("the local rank", local_rank, 0) : 0;
  // Slurm spells tasks per node as "4(x2)" on heterogeneous allocations: the leading count is ours.
  if (local_world) {
    std::string count = local_world;
    count = count.substr(0, count.find('('));
    info.local_world_size = parse_count("the local world size", count.c_str(), 1);
  }
  if (const char* addr = get("MASTER_ADDR")) info.master_addr = addr;
  if (const char* port = get("MASTER_PORT")) {
    const int64_t p = parse_count("MASTER_PORT", port, 1);
    if (p > 65535) fail(kWhere, std::string("MASTER_PORT=") + port + " is not a TCP port (1-65535)");
    info.master_port = static_cast<int>(p);
  }
  return info;
}

std::shared_ptr<ProcessGroup> ProcessGroup::connect(const LaunchInfo& launch, const DistributedOptions& options,
                                                    const std::string& device) {
  if (options.timeout.count() <= 0) fail_setting(kWhere, "distributed timeout", "{} must be positive");
  return std::make_shared<C10dProcessGroup>(launch, options, device);
}

struct GradientReducer::Impl {
  struct Bucket {
    at::Tensor flat;
    std::vector<size_t> members;
    size_t pending = 0;
    bool launched = false;
    std::function<void()> wait;
  };
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;
    bool ready = false;
  };

  std::shared_ptr<ProcessGroup> group;
  std::vector<at::Tensor> parameters;
  std::vector<std::string> names;
  std::vector<Slot> slots;
  std::vector<Bucket> buckets;
  std::vector<unsigned> hooks;
  size_t next_launch = 0;
  bool communicate = false;
  double wait_seconds = 0;
  std::mutex mutex;

  at::Tensor slot_view(size_t i) {
    const Slot& s = slots[i];
    return buckets[s.bucket].flat.narrow(0, s.offset, parameters[i].numel()).view_as(parameters[i]);
  }

  // Buckets go out in index order on every rank, whatever order backward finishes them in, so
  // that the ranks' collectives pair up.
  void launch_ready() {
    while (next_launch < buckets.size() && buckets[next_launch].pending == 0) {
      Bucket& b = buckets[next_launch++];
      b.launched = true;
      b.wait = group->start_all_reduce_sum(b.flat);
    }
  }

  void on_gradient(size_t i, const at::Tensor& grad) {
    if (!communicate) return;
    std::lock_guard<std::mutex> lock(mutex);
    torch::NoGradGuard no_grad;
    Slot& s = slots[i];
    Bucket& b = buckets[s.bucket];
    if (b.launched)
      fail(kWhere, "a second gradient of " + names[i] + " arrived after its bucket was sent: a parameter used by "
                       "two backward passes of one micro-batch is not supported");
    at::Tensor view = slot_view(i);
    if (s.ready) {
      view.add_(grad);
      return;
    }
    // Earlier micro-batches' gradients are in .grad; this backward's is added to it only after
    // the hook returns.
    const at::Tensor& accumulated = parameters[i].grad();
    if (accumulated.defined())
      view.copy_(accumulated + grad);
    else
      view.copy_(grad);
    s.ready = true;
    if (--b.pending == 0) launch_ready();
  }
};

GradientReducer::GradientReducer(std::shared_ptr<ProcessGroup> group, const NamedParameters& parameters,
                                 int64_t bucket_bytes)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.group = std::move(group);
  // Backward reaches the last parameters first (DDP's heuristic): buckets fill in reverse order.
  std::vector<int64_t> sizes;
  for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
    const at::Tensor& p = it->second;
    const bool fits = !m.buckets.empty() && sizes.back() + static_cast<int64_t>(p.nbytes()) <= bucket_bytes &&
                      m.buckets.back().flat.scalar_type() == p.scalar_type() &&
                      m.buckets.back().flat.device() == p.device();
    if (!fits) {
      m.buckets.push_back({});
      m.buckets.back().flat = at::empty({0}, p.options());
      sizes.push_back(0);
    }
    m.parameters.push_back(p);
    m.names.push_back(it->first);
    m.slots.push_back({m.buckets.size() - 1, sizes.back() / static_cast<int64_t>(p.element_size()), false});
    m.buckets.back().members.push_back(m.parameters.size() - 1);
    sizes.back() += static_cast<int64_t>(p.nbytes());
  }
  for (size_t b = 0; b < m.buckets.size(); ++b)
    m.buckets[b].flat = at::zeros({sizes[b] / static_cast<int64_t>(m.buckets[b].flat.element_size())},
                                  m.buckets[b].flat.options());
  for (size_t i = 0; i < m.parameters.size(); ++i) {
    Impl* impl = impl_.get();
    m.hooks.push_back(m.parameters[i].register_hook([impl, i](const at::Tensor& grad) { impl->on_gradient(i, grad); }));
  }
}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < impl_->parameters.size(); ++i) impl_->parameters[i].remove_hook(impl_->hooks[i]);
}

void GradientReducer::begin(bool communicate) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  m.communicate = communicate;
  m.next_launch = 0;
  for (auto& s : m.slots) s.ready = false;
  for (auto& b : m.buckets) {
    b.pending = b.members.size();
    b.launched = false;
    b.wait = nullptr;
  }
}

void GradientReducer::finish() {
  Impl& m = *impl_;
  torch::NoGradGuard no_grad;
  {
    std::lock_guard<std::mutex> lock(m.mutex);
    if (!m.communicate) fail(kWhere, "GradientReducer::finish without a communicating micro-batch");
    // fairseq's legacy DDP reduces every gradient, zeros where a rank's backward missed one.
    for (size_t i = 0; i < m.parameters.size(); ++i) {
      Impl::Slot& s = m.slots[i];
      if (s.ready) continue;
      at::Tensor view = m.slot_view(i);
      const at::Tensor& accumulated = m.parameters[i].grad();
      if (accumulated.defined())
        view.copy_(accumulated);
      else
        view.zero_();
      s.ready = true;
      --m.buckets[s.bucket].pending;
    }
    m.launch_ready();
  }
  const auto start = std::chrono::steady_clock::now();
  for (auto& b : m.buckets) b.wait();
  m.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (size_t i = 0; i < m.parameters.size(); ++i) m.parameters[i].mutable_grad() = m.slot_view(i);
  m.communicate = false;
}

double GradientReducer::last_wait_seconds() const { return impl_->wait_seconds; }

}  // namespace kosmosg::train
