// One communicator interface for every backend (MPI, NCCL): all-to-all with per-rank sizes,
// all-gather of per-rank tensors, all-reduce, broadcast, barrier and sub-groups, with counters of
// calls and bytes per collective kind that benchmarks and tests read.
#pragma once
#include <ATen/ATen.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

namespace ditto {

enum class ReduceOp { Sum, Max };

struct CollectiveCount {
  int64_t calls = 0;
  int64_t bytes = 0;      // payload this rank sent to other ranks (see Communicator)
  double seconds = 0;     // wall time inside the call (enqueue time for asynchronous backends)
};

struct CommCounters {
  CollectiveCount all_to_all, all_gather, all_reduce, broadcast, barrier;
  int64_t total_bytes() const {
    return all_to_all.bytes + all_gather.bytes + all_reduce.bytes + broadcast.bytes + barrier.bytes;
  }
  double total_seconds() const {
    return all_to_all.seconds + all_gather.seconds + all_reduce.seconds + broadcast.seconds + barrier.seconds;
  }
};

// A collective in flight (Communicator::all_to_all_start): wait() completes it (the receive tensors
// are then filled; on a GPU the compute stream waits for it). Destroyed unwaited, it waits.
class PendingCollective {
 public:
  virtual ~PendingCollective() = default;
  virtual void wait() = 0;
};

// Every rank of a communicator must call the same collectives in the same order.
// Byte counters: all_to_all counts sum_{j != me} |send[j]|; all_gather |send| (P - 1);
// all_reduce |t|; broadcast |t| (P - 1) on the root and 0 elsewhere.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // send[j] goes to rank j; recv[j] (allocated by the caller with the size rank j sends, contiguous,
  // same dtype and device as send) receives it. Sizes may differ per rank and may be zero.
  virtual void all_to_all(const std::vector<at::Tensor>& send, std::vector<at::Tensor>& recv) = 0;
  // The same, started and left in flight: the caller computes meanwhile and calls wait() before it
  // reads `recv`. Several may be in flight; every rank starts them in the same order. Backends
  // without asynchronous collectives complete it here.
  virtual std::unique_ptr<PendingCollective> all_to_all_start(const std::vector<at::Tensor>& send,
                                                              std::vector<at::Tensor>& recv);
  // recv[j] (allocated by the caller) receives rank j's `send`; sizes may differ per rank.
  virtual void all_gather(const at::Tensor& send, std::vector<at::Tensor>& recv) = 0;
  virtual void all_reduce(at::Tensor& t, ReduceOp op) = 0;
  virtual void broadcast(at::Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Ranks passing the same color form a new communicator, ordered by key.
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;

  const CommCounters& counters() const { return counters_; }
  void reset_counters() { counters_ = {}; }

 protected:
  CommCounters counters_;
};

// Sizes of near-equal contiguous shards: n items over p ranks, the first n % p ranks one more.
// A process-wide count of exchange groups (--ulysses-head-groups, --dsp-frame-groups): 1 .. 64.
class GroupCount {
 public:
  explicit GroupCount(const char* option) : option_(option) {}
  void set(int groups);
  int get() const { return value_; }

 private:
  const char* option_;
  std::atomic<int> value_{1};
};

struct Split {
  std::vector<int64_t> counts, offsets;
  Split(int64_t n, int p);
};

// All-gathers per-rank tensors that differ only in dimension `dim` and concatenates them in rank order.
at::Tensor all_gather_cat(Communicator& comm, const at::Tensor& local, int64_t dim);
// Rank `root`'s string on every rank (the others pass anything).
std::string broadcast_string(Communicator& comm, const std::string& s, int root = 0);

}  // namespace ditto
