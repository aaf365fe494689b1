// The MPI backend: CPU tensors directly, CUDA tensors through host staging. What CI tests multi-rank
// with, and what runs several ranks on one GPU (NCCL refuses that).
#pragma once
#include <mpi.h>

#include "dist/communicator.h"

namespace ditto {

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
  void all_gather(const at::Tensor& send, std::vector<at::Tensor>& recv) override;
  void all_reduce(at::Tensor& t, ReduceOp op) override;
  void broadcast(at::Tensor& t, int root) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key) override;

 private:
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

}  // namespace ditto
