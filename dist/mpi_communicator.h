// The MPI backend: CPU tensors directly, CUDA tensors through host staging. What CI tests multi-rank
// with, and what runs several ranks on one GPU (NCCL refuses that). Collectives are started
// non-blocking and waited on with the peers' liveness checked every --timeout (dist/liveness.h): a
// rank that stops answering ends the job with its number instead of hanging it.
#pragma once
#include <mpi.h>

#include <vector>

#include "dist/communicator.h"

namespace ditto {

// An Error "MPI WHAT failed: <MPI's message>" unless rc is MPI_SUCCESS (communicators return errors).
void check_mpi(int rc, const std::string& what);

class MpiCommunicator : public Communicator {
 public:
  // Wraps (does not own) comm; use split() for owned sub-communicators.
  explicit MpiCommunicator(MPI_Comm comm, bool owned = false);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  MPI_Comm handle() const { return comm_; }

  void all_to_all(const std::vector<at::Tensor>& send, std::vector<at::Tensor>& recv) override;
  std::unique_ptr<PendingCollective> all_to_all_start(const std::vector<at::Tensor>& send,
                                                      std::vector<at::Tensor>& recv) override;
  void all_gather(const at::Tensor& send, std::vector<at::Tensor>& recv) override;
  void all_reduce(at::Tensor& t, ReduceOp op) override;
  void broadcast(at::Tensor& t, int root) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;

 private:
  friend struct MpiPendingAllToAll;
  void wait(MPI_Request& request, const char* what);

  MPI_Comm comm_;
  bool owned_;
  std::vector<int> peers_;  // the other members' world ranks (whom a long wait pings)
  int rank_ = 0, size_ = 1;
};

}  // namespace ditto
