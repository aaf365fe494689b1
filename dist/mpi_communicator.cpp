// MPI collectives over ATen tensors (see mpi_communicator.h).
#include "dist/mpi_communicator.h"

#include <chrono>
#include <climits>

#include "dist/liveness.h"
#include "model/error.h"

namespace ditto {

void check_mpi(int rc, const std::string& what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail("MPI ", what, " failed: ", std::string(msg, len));
  }
}

namespace {

int byte_count(int64_t bytes, const char* what) {
  if (bytes > INT_MAX) fail("MPI ", what, ": a message of ", bytes, " bytes exceeds MPI's int count");
  return static_cast<int>(bytes);
}

int64_t nbytes(const at::Tensor& t) { return t.numel() * t.element_size(); }

// Host copies of device tensors (MPI sees only host memory); CPU tensors are used in place.
at::Tensor host(const at::Tensor& t) { return t.is_cpu() ? t.contiguous() : t.to(at::kCPU).contiguous(); }

class Timer {
 public:
  // count_call: a new call (false: the wait of one started before).
  explicit Timer(CollectiveCount& c, bool count_call = true) : c_(c), t0_(std::chrono::steady_clock::now()) {
    if (count_call) ++c_.calls;
  }
  ~Timer() { c_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

 private:
  CollectiveCount& c_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owned) : comm_(comm), owned_(owned) {
  // Errors come back as return codes, which check_mpi() turns into exceptions naming the collective
  // (MPI's default handler would end the process before ditto could say which).
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  peers_ = peer_world_ranks(comm_);
}

void MpiCommunicator::wait(MPI_Request& request, const char* what) {
  int rc = MPI_SUCCESS;
  wait_with_liveness(
      [&] {
        int flag = 0;
        rc = MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
        return flag != 0 || rc != MPI_SUCCESS;
      },
      peers_, std::string("MPI ") + what);
  check_mpi(rc, what);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && !finalized) MPI_Comm_free(&comm_);
}

// An MPI_Ialltoallv in flight with its packed buffers; wait() unpacks into the receive tensors.
struct MpiPendingAllToAll : PendingCollective {
  MpiCommunicator* comm = nullptr;
  MPI_Request req = MPI_REQUEST_NULL;
  at::Tensor sbuf, rbuf;
  std::vector<int> rcount, rdispl;
  std::vector<at::Tensor> recv;  // the caller's tensors (shared storage)
  bool done = false;
  void wait() override {
    if (done) return;
    done = true;
    Timer timer(comm->counters_.all_to_all, false);
    comm->wait(req, "all_to_all");
    for (size_t j = 0; j < recv.size(); ++j) {
      at::Tensor part = rbuf.narrow(0, rdispl[j], rcount[j]).view(recv[j].scalar_type()).view(recv[j].sizes());
      recv[j].copy_(part);
    }
  }
  ~MpiPendingAllToAll() override {
    try {
      wait();
    } catch (...) {  // an error already unwinding, or one MPI reports here: the request is gone either way
    }
  }
};

std::unique_ptr<PendingCollective> MpiCommunicator::all_to_all_start(const std::vector<at::Tensor>& send,
                                                                     std::vector<at::Tensor>& recv) {
  if (static_cast<int>(send.size()) != size_ || static_cast<int>(recv.size()) != size_)
    fail("all_to_all: need ", size_, " send and receive tensors, got ", send.size(), " and ", recv.size());
  auto p = std::make_unique<MpiPendingAllToAll>();
  p->comm = this;
  {
    Timer timer(counters_.all_to_all);
    std::vector<int> scount(size_), sdispl(size_);
    p->rcount.resize(size_);
    p->rdispl.resize(size_);
    int64_t stotal = 0, rtotal = 0;
    for (int j = 0; j < size_; ++j) {
      if (send[j].scalar_type() != recv[j].scalar_type()) fail("all_to_all: send and receive dtypes differ");
      scount[j] = byte_count(nbytes(send[j]), "all_to_all");
      p->rcount[j] = byte_count(nbytes(recv[j]), "all_to_all");
      sdispl[j] = byte_count(stotal, "all_to_all");
      p->rdispl[j] = byte_count(rtotal, "all_to_all");
      stotal += scount[j];
      rtotal += p->rcount[j];
      if (j != rank_) counters_.all_to_all.bytes += scount[j];
    }
    // Packed into one host buffer each way.
    std::vector<at::Tensor> flat_send;
    for (const auto& s : send) flat_send.push_back(host(s).view({-1}).view(at::kByte));
    p->sbuf = flat_send.empty() ? at::empty({0}, at::kByte) : at::cat(flat_send);
    p->rbuf = at::empty({rtotal}, at::kByte);
    p->recv = recv;
    check_mpi(MPI_Ialltoallv(p->sbuf.data_ptr(), scount.data(), sdispl.data(), MPI_BYTE, p->rbuf.data_ptr(),
                             p->rcount.data(), p->rdispl.data(), MPI_BYTE, comm_, &p->req),
              "all_to_all");
  }
  return p;
}

void MpiCommunicator::all_to_all(const std::vector<at::Tensor>& send, std::vector<at::Tensor>& recv) {
  all_to_all_start(send, recv)->wait();
}

void MpiCommunicator::all_gather(const at::Tensor& send, std::vector<at::Tensor>& recv) {
  if (static_cast<int>(recv.size()) != size_) fail("all_gather: need ", size_, " receive tensors");
  Timer timer(counters_.all_gather);
  at::Tensor s = host(send);
  std::vector<int> rcount(size_), rdispl(size_);
  int64_t total = 0;
  for (int j = 0; j < size_; ++j) {
    rcount[j] = byte_count(nbytes(recv[j]), "all_gather");
    rdispl[j] = byte_count(total, "all_gather");
    total += rcount[j];
  }
  if (rcount[rank_] != nbytes(s)) fail("all_gather: this rank's receive slot does not match its send size");
  counters_.all_gather.bytes += nbytes(s) * (size_ - 1);
  at::Tensor rbuf = at::empty({total}, at::kByte);
  MPI_Request req;
  check_mpi(MPI_Iallgatherv(s.data_ptr(), byte_count(nbytes(s), "all_gather"), MPI_BYTE, rbuf.data_ptr(), rcount.data(),
                        rdispl.data(), MPI_BYTE, comm_, &req),
        "all_gather");
  wait(req, "all_gather");
  for (int j = 0; j < size_; ++j)
    recv[j].copy_(rbuf.narrow(0, rdispl[j], rcount[j]).view(recv[j].scalar_type()).view(recv[j].sizes()));
}

void MpiCommunicator::all_reduce(at::Tensor& t, ReduceOp op) {
  Timer timer(counters_.all_reduce);
  counters_.all_reduce.bytes += nbytes(t);
  // Reduce in a type MPI knows: half types go through float32.
  at::Tensor h = host(t);
  if (h.scalar_type() == at::kHalf || h.scalar_type() == at::kBFloat16) h = h.to(at::kFloat);
  MPI_Datatype type;
  switch (h.scalar_type()) {
    case at::kFloat: type = MPI_FLOAT; break;
    case at::kDouble: type = MPI_DOUBLE; break;
    case at::kLong: type = MPI_INT64_T; break;
    case at::kInt: type = MPI_INT32_T; break;
    default: fail("all_reduce: unsupported dtype ", c10::toString(h.scalar_type()));
  }
  at::Tensor out = at::empty_like(h);
  MPI_Request req;
  check_mpi(MPI_Iallreduce(h.data_ptr(), out.data_ptr(), byte_count(h.numel(), "all_reduce"), type,
                       op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, comm_, &req),
        "all_reduce");
  wait(req, "all_reduce");
  t.copy_(out);
}

void MpiCommunicator::broadcast(at::Tensor& t, int root) {
  Timer timer(counters_.broadcast);
  if (rank_ == root) counters_.broadcast.bytes += nbytes(t) * (size_ - 1);
  at::Tensor h = host(t);
  if (h.data_ptr() == t.data_ptr() && !t.is_contiguous()) h = h.clone();
  MPI_Request req;
  check_mpi(MPI_Ibcast(h.data_ptr(), byte_count(nbytes(h), "broadcast"), MPI_BYTE, root, comm_, &req), "broadcast");
  wait(req, "broadcast");
  if (h.data_ptr() != t.data_ptr()) t.copy_(h);
}

void MpiCommunicator::barrier() {
  Timer timer(counters_.barrier);
  MPI_Request req;
  check_mpi(MPI_Ibarrier(comm_, &req), "barrier");
  wait(req, "barrier");
}

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key) {
  MPI_Comm sub;
  check_mpi(MPI_Comm_split(comm_, color, key, &sub), "split");
  return std::make_unique<MpiCommunicator>(sub, /*owned=*/true);
}

}  // namespace ditto
