// NCCL collectives over CUDA tensors (see nccl_communicator.h).
#include "dist/nccl_communicator.h"

#include "dist/liveness.h"
#include "model/error.h"

#ifdef DITTO_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>

namespace ditto {

namespace {

void check_nccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) fail("NCCL ", what, " failed: ", ncclGetErrorString(r));
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA ", what, " failed: ", cudaGetErrorString(e));
}

ncclDataType_t nccl_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    case at::kChar: return ncclInt8;
    default: fail("NCCL: unsupported dtype ", c10::toString(t));
  }
}

int64_t nbytes(const at::Tensor& t) { return t.numel() * t.element_size(); }

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(MPI_Comm mpi_comm, int device, double timeout_s)
      : device_(device), timeout_s_(timeout_s), stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/true, device)),
        mpi_comm_(mpi_comm) {
    MPI_Comm_rank(mpi_comm_.comm, &rank_);
    MPI_Comm_size(mpi_comm_.comm, &size_);
    c10::cuda::CUDAGuard guard(device_);
    check_distinct_gpus();
    ncclUniqueId id;
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "get unique id");
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi_comm_.comm);
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "init");
    try {
      watchdog_ = std::thread([this] { watch(); });
    } catch (...) {
      ncclCommDestroy(comm_);
      throw;
    }
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    watchdog_.join();
    // While an exception unwinds, collectives may still be in flight: abort instead of waiting.
    if (std::uncaught_exceptions() > 0) ncclCommAbort(comm_);
    else ncclCommDestroy(comm_);
    for (const Pending& p : pending_) cudaEventDestroy(p.done);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  void all_to_all(const std::vector<at::Tensor>& send, std::vector<at::Tensor>& recv) override {
    all_to_all_start(send, recv)->wait();
  }

  // Enqueued on the communication stream; wait() makes the compute stream wait for it.
  std::unique_ptr<PendingCollective> all_to_all_start(const std::vector<at::Tensor>& send,
                                                      std::vector<at::Tensor>& recv) override {
    if (static_cast<int>(send.size()) != size_ || static_cast<int>(recv.size()) != size_)
      fail("all_to_all: need ", size_, " send and receive tensors");
    // Contiguous copies are made on the compute stream before the communication stream waits on it.
    std::vector<at::Tensor> keep;
    for (int j = 0; j < size_; ++j) {
      keep.push_back(device_tensor(send[j], "all_to_all").contiguous());
      device_tensor(recv[j], "all_to_all");
      if (!recv[j].is_contiguous()) fail("NCCL all_to_all: receive tensors must be contiguous");
      if (j != rank_) counters_.all_to_all.bytes += nbytes(keep[j]);
    }
    auto p = std::make_unique<InFlight>();
    p->comm = this;
    p->recv = recv;  // kept alive until the compute stream waits for the stream that writes them
    p->after = enqueue("all_to_all", counters_.all_to_all, keep, [&] {
      check_nccl(ncclGroupStart(), "group start");
      for (int j = 0; j < size_; ++j) {
        if (keep[j].numel()) check_nccl(ncclSend(keep[j].data_ptr(), nbytes(keep[j]), ncclUint8, j, comm_, stream_), "send");
        if (recv[j].numel())
          check_nccl(ncclRecv(recv[j].data_ptr(), nbytes(recv[j]), ncclUint8, j, comm_, stream_), "recv");
      }
      check_nccl(ncclGroupEnd(), "group end");
    });
    return p;
  }

  void all_gather(const at::Tensor& send, std::vector<at::Tensor>& recv) override {
    if (static_cast<int>(recv.size()) != size_) fail("all_gather: need ", size_, " receive tensors");
    at::Tensor s = device_tensor(send, "all_gather").contiguous();
    if (nbytes(s) != nbytes(recv[rank_])) fail("NCCL all_gather: this rank's receive slot does not match its send size");
    for (auto& t : recv)
      if (!device_tensor(t, "all_gather").is_contiguous()) fail("NCCL all_gather: receive tensors must be contiguous");
    counters_.all_gather.bytes += nbytes(s) * (size_ - 1);
    run("all_gather", counters_.all_gather, {s}, [&] {
      check_nccl(ncclGroupStart(), "group start");
      for (int j = 0; j < size_; ++j)  // per-rank sizes: one broadcast per root
        if (recv[j].numel())
          check_nccl(ncclBroadcast(s.data_ptr(), recv[j].data_ptr(), nbytes(recv[j]), ncclUint8, j, comm_, stream_),
                     "broadcast");
      check_nccl(ncclGroupEnd(), "group end");
    });
  }

  void all_reduce(at::Tensor& t, ReduceOp op) override {
    if (!device_tensor(t, "all_reduce").is_contiguous()) fail("NCCL all_reduce: the tensor must be contiguous");
    counters_.all_reduce.bytes += nbytes(t);
    run("all_reduce", counters_.all_reduce, {}, [&] {
      check_nccl(ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()),
                               op == ReduceOp::Sum ? ncclSum : ncclMax, comm_, stream_),
                 "all_reduce");
    });
  }

  void broadcast(at::Tensor& t, int root) override {
    if (!device_tensor(t, "broadcast").is_contiguous()) fail("NCCL broadcast: the tensor must be contiguous");
    if (rank_ == root) counters_.broadcast.bytes += nbytes(t) * (size_ - 1);
    run("broadcast", counters_.broadcast, {}, [&] {
      check_nccl(ncclBroadcast(t.data_ptr(), t.data_ptr(), nbytes(t), ncclUint8, root, comm_, stream_), "broadcast");
    });
  }

  void barrier() override {
    at::Tensor one = at::ones({1}, at::TensorOptions().dtype(at::kFloat).device(at::kCUDA, device_));
    all_reduce(one, ReduceOp::Sum);
    check_cuda(cudaStreamSynchronize(c10::cuda::getCurrentCUDAStream(device_)), "barrier sync");
    ++counters_.barrier.calls;
  }

  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    MPI_Comm_split(mpi_comm_.comm, color, key, &sub);
    const DupComm owned_sub(sub);  // freed however the construction below ends
    MPI_Comm_free(&sub);
    return std::make_unique<NcclCommunicator>(owned_sub.comm, device_, timeout_s_);
  }

 private:
  const at::Tensor& device_tensor(const at::Tensor& t, const char* what) const {
    if (!t.is_cuda() || t.get_device() != device_)
      fail("NCCL ", what, ": tensors must be on cuda:", device_, " (got ", t.device().str(), ")");
    return t;
  }

  // A collective enqueued and not yet waited for by the compute stream.
  struct InFlight : PendingCollective {
    NcclCommunicator* comm = nullptr;
    cudaEvent_t after = nullptr;  // recorded on the communication stream after the collective
    std::vector<at::Tensor> recv;
    void wait() override {
      if (!after) return;
      comm->wait_on(after);
      after = nullptr;
      recv.clear();
    }
    ~InFlight() override {
      try {
        wait();
      } catch (...) {
      }
    }
  };

  // The compute stream waits for `after` (then released).
  void wait_on(cudaEvent_t after) {
    c10::cuda::CUDAGuard guard(device_);
    const cudaError_t e = cudaStreamWaitEvent(c10::cuda::getCurrentCUDAStream(device_).stream(), after, 0);
    cudaEventDestroy(after);
    check_cuda(e, "stream wait");
  }

  // Enqueues `body` on the communication stream after the compute stream's pending work (inputs are
  // final by then), makes the compute stream wait for it, and hands the completion event to the
  // watchdog. The pending record is registered before `body`, so a hang inside the NCCL call itself
  // (a peer that never arrives) is also caught by the timeout.
  template <typename Body>
  void run(const char* what, CollectiveCount& count, const std::vector<at::Tensor>& inputs, Body body) {
    wait_on(enqueue(what, count, inputs, body));
  }

  // The same without the wait: returns an event recorded after the collective on the communication
  // stream (the caller's to wait on; the watchdog keeps its own).
  template <typename Body>
  cudaEvent_t enqueue(const char* what, CollectiveCount& count, const std::vector<at::Tensor>& inputs, Body body) {
    const auto t0 = std::chrono::steady_clock::now();
    ++count.calls;
    c10::cuda::CUDAGuard guard(device_);
    c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(device_);
    cudaEvent_t ready = nullptr, done = nullptr, after = nullptr;
    check_cuda(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "event");
    std::shared_ptr<std::atomic<bool>> enqueued = std::make_shared<std::atomic<bool>>(false);
    try {
      check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "event");
      check_cuda(cudaEventRecord(ready, compute.stream()), "event record");
      check_cuda(cudaStreamWaitEvent(stream_.stream(), ready, 0), "stream wait");
      {
        std::lock_guard<std::mutex> lock(mu_);
        pending_.push_back({done, std::chrono::steady_clock::now(), what, enqueued});
      }
      check_cuda(cudaEventCreateWithFlags(&after, cudaEventDisableTiming), "event");
      body();
      check_cuda(cudaEventRecord(done, stream_.stream()), "event record");
      check_cuda(cudaEventRecord(after, stream_.stream()), "event record");
    } catch (...) {
      // Nothing was enqueued after the failure: forget the record so the watchdog does not wait on it.
      {
        std::lock_guard<std::mutex> lock(mu_);
        pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [&](const Pending& p) { return p.done == done; }),
                       pending_.end());
      }
      cudaEventDestroy(ready);
      if (done) cudaEventDestroy(done);
      if (after) cudaEventDestroy(after);
      throw;
    }
    enqueued->store(true);  // from here the watchdog may query (and destroy) `done`; `after` is ours
    // Inputs used on the communication stream must not be reused before it is done with them.
    for (const auto& t : inputs) c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), stream_);
    cudaEventDestroy(ready);
    cv_.notify_all();
    count.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return after;
  }

  // NCCL refuses two ranks on one GPU with an obscure error: say which ranks share which GPU.
  void check_distinct_gpus() {
    cudaDeviceProp prop;
    check_cuda(cudaGetDeviceProperties(&prop, device_), "device properties");
    std::vector<char> all(16 * size_);
    MPI_Allgather(prop.uuid.bytes, 16, MPI_BYTE, all.data(), 16, MPI_BYTE, mpi_comm_.comm);
    // Every rank sees every UUID, so every rank reaches the same verdict.
    for (int i = 0; i < size_; ++i)
      for (int j = i + 1; j < size_; ++j)
        if (std::equal(all.begin() + 16 * i, all.begin() + 16 * i + 16, all.begin() + 16 * j))
          fail("ranks ", i, " and ", j, " of a NCCL group share one GPU: NCCL needs one GPU per rank; ",
               "launch at most one rank per GPU, or use --comm mpi");
  }

  void watch() {
    cudaSetDevice(device_);
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess) die(std::string("asynchronous NCCL error: ") + ncclGetErrorString(async));
      while (!pending_.empty()) {
        auto& p = pending_.front();
        const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - p.enqueued).count();
        if (!p.recorded->load()) {  // still inside the NCCL call on the host
          if (timeout_s_ > 0 && waited > timeout_s_) die(std::string(p.what) + " did not return within " + std::to_string(timeout_s_) + " s" + silent_peers());
          break;
        }
        const cudaError_t q = cudaEventQuery(p.done);
        if (q == cudaSuccess) {
          cudaEventDestroy(p.done);
          pending_.pop_front();
          continue;
        }
        if (q != cudaErrorNotReady) die(std::string("CUDA error in ") + p.what + ": " + cudaGetErrorString(q));
        if (timeout_s_ > 0 && waited > timeout_s_)
          die(std::string(p.what) + " did not finish within " + std::to_string(timeout_s_) + " s" + silent_peers());
        break;
      }
    }
  }

  // Which peers stopped answering (pinged over MPI), for the timeout message.
  std::string silent_peers() {
    const std::vector<int> silent = silent_ranks(peer_world_ranks(mpi_comm_.comm), std::min(timeout_s_, 10.0));
    if (silent.empty()) return ": every peer rank still answers (a peer is slow or NCCL hangs)";
    std::string who;
    for (int r : silent) who += (who.empty() ? "" : ", ") + std::to_string(r);
    return ": rank " + who + " does not answer (stopped, hung or dead)";
  }

  [[noreturn]] void die(const std::string& why) {
    std::fprintf(stderr, "[rank %d] error: NCCL communicator: %s\n", rank_, why.c_str());
    std::fflush(stderr);
    ncclCommAbort(comm_);
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::abort();
  }

  struct Pending {
    cudaEvent_t done;
    std::chrono::steady_clock::time_point enqueued;
    const char* what;
    std::shared_ptr<std::atomic<bool>> recorded;  // the completion event has been recorded
  };

  // A duplicate of an MPI communicator, freed when its owner is destroyed or fails to construct.
  struct DupComm {
    explicit DupComm(MPI_Comm c) { MPI_Comm_dup(c, &comm); }
    ~DupComm() {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Comm_free(&comm);
    }
    DupComm(const DupComm&) = delete;
    DupComm& operator=(const DupComm&) = delete;
    MPI_Comm comm = MPI_COMM_NULL;
  };

  int device_;
  double timeout_s_;
  c10::cuda::CUDAStream stream_;
  DupComm mpi_comm_;
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_ = nullptr;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> pending_;
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace

bool nccl_available() { return true; }

std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm mpi_comm, int device, double timeout_s) {
  return std::make_unique<NcclCommunicator>(mpi_comm, device, timeout_s);
}

}  // namespace ditto

#else  // CPU-only build

namespace ditto {

bool nccl_available() { return false; }

std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm, int, double) {
  fail("this ditto was built without CUDA (DITTO_CUDA=OFF): the NCCL backend is not available; use --comm mpi");
}

}  // namespace ditto

#endif
