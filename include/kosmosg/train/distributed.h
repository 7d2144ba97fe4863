#pragma once
// Data-parallel training on LibTorch's c10d: where a process sits in a job (read from torchrun,
// Slurm or Open MPI), a process group (Gloo on the CPU, NCCL on CUDA) rendezvousing through a
// TCPStore, and the gradient reducer that averages gradients with bucketed all-reduces launched
// from autograd hooks while the backward pass goes on, as PyTorch's DDP does.
#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kosmosg/train/optim.h"

namespace kosmosg::train {

// This process's place in a job. MASTER_ADDR:MASTER_PORT is where rank 0 serves the rendezvous.
struct LaunchInfo {
  int64_t rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // "torchrun" (or scripts/launch.sh), "slurm", "openmpi" or "none"
  // torchrun's agent already serves the store at MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE): every
  // rank connects to it as a client.
  bool agent_store = false;
  // torchrun's restart attempt (TORCHELASTIC_RESTART_COUNT): a restarted group's store keys must
  // not meet those the failed attempt left in the agent's store.
  int64_t restart_count = 0;

  // Read from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
  // MASTER_PORT, and the agent store and restart count), else Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the first host of
  // SLURM_JOB_NODELIST), else Open MPI's (OMPI_COMM_WORLD_*); a single process when none is set.
  // `getenv` is replaceable for tests. Inconsistent values are an Error naming the variable.
  static LaunchInfo from_environment(const std::function<const char*(const char*)>& getenv = nullptr);
};

// The first host of a Slurm node list ("node[003-005,007],gpu1" → "node003").
std::string first_slurm_host(const std::string& nodelist);

struct DistributedOptions {
  std::string backend;  // "gloo", "nccl", or empty: NCCL for CUDA devices, Gloo otherwise
  std::chrono::milliseconds timeout{std::chrono::minutes(10)};  // rendezvous, collectives, a silent rank
  int64_t bucket_bytes = 25 << 20;                              // gradient bucket size (DDP's default)
};

// A connected group of ranks. Every collective is entered by every rank in the same order; a rank
// that died or hangs makes the others fail within the timeout with an Error naming it.
class ProcessGroup {
 public:
  // Rendezvous of `launch.world_size` processes at MASTER_ADDR:MASTER_PORT (rank 0 serves it).
  static std::shared_ptr<ProcessGroup> connect(const LaunchInfo& launch, const DistributedOptions& options,
                                               const std::string& device);
  virtual ~ProcessGroup() = default;

  virtual int64_t rank() const = 0;
  virtual int64_t world_size() const = 0;
  virtual const std::string& backend() const = 0;

  // Copies rank `root`'s values into every rank's tensors (in place, coalesced).
  virtual void broadcast(const std::vector<at::Tensor>& tensors, int64_t root = 0) = 0;
  // Sums `values` over the ranks, in place.
  virtual void all_reduce_sum(std::vector<double>& values) = 0;
  // Each rank's `text`, in rank order (through the rendezvous store: for small metadata).
  virtual std::vector<std::string> all_gather_text(const std::string& text) = 0;
  virtual void barrier() = 0;

  // Starts a sum all-reduce of one flat tensor; the returned function waits for it.
  virtual std::function<void()> start_all_reduce_sum(at::Tensor& flat) = 0;
  // Marks progress (an update begun) that fault messages report; called once per update.
  virtual void heartbeat(int64_t update) = 0;
  // Rethrows `error` (from a collective) as an Error that names the ranks that stopped or hang.
  [[noreturn]] virtual void fail_collective(const std::string& what, const std::exception& error) = 0;
};

// Sums the gradients of `parameters` over the ranks of `group`. Buckets of about `bucket_bytes`, in
// reverse parameter order, are all-reduced as soon as backward has produced all their gradients,
// in bucket order on every rank; the rest go out in finish(). Between begin() and finish() only
// the last micro-batch's backward communicates (gradient accumulation).
class GradientReducer {
 public:
  GradientReducer(std::shared_ptr<ProcessGroup> group, const NamedParameters& parameters, int64_t bucket_bytes);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Before each micro-batch's backward; `communicate` for the update's last one.
  void begin(bool communicate);
  // After the last backward: sends what backward did not (zeros for gradients it never produced),
  // waits, and leaves every parameter's .grad holding the sum over the ranks.
  void finish();
  // Seconds finish() spent waiting for communication that the backward pass did not hide.
  double last_wait_seconds() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kosmosg::train
