// The MPI process environment: init/finalize, world rank and size, node-local rank (for the GPU
// index), and ending the whole job when one rank fails so no rank waits forever.
#pragma once
#include <string>

namespace ditto {

class MpiEnv {
 public:
  MpiEnv(int* argc, char*** argv);
  ~MpiEnv();
  MpiEnv(const MpiEnv&) = delete;
  MpiEnv& operator=(const MpiEnv&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // The thread support the MPI library granted (MPI_THREAD_SINGLE .. MPI_THREAD_MULTIPLE).
  int thread_support() const { return thread_support_; }

  // Prints "[rank r] error: message" to stderr and ends every rank of the job with `code`.
  [[noreturn]] void abort(const std::string& message, int code = 1) const;

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1, thread_support_ = 0;
  bool finalize_ = false;
};

}  // namespace ditto
