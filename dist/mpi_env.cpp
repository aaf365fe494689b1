// MPI bootstrap (see mpi_env.h).
#include "dist/mpi_env.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>

#include "dist/liveness.h"

namespace ditto {

MpiEnv::MpiEnv(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    // The NCCL watchdog thread may call MPI_Abort.
    MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    finalize_ = true;
  }
  MPI_Query_thread(&thread_support_);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
  MPI_Comm_rank(local, &local_rank_);
  MPI_Comm_size(local, &local_size_);
  MPI_Comm_free(&local);
  // Peers answer pings from a thread of their own, so a waiting rank can tell slow from stopped.
  if (size_ > 1 && thread_support_ >= MPI_THREAD_MULTIPLE) start_liveness();
}

MpiEnv::~MpiEnv() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) stop_liveness();
  if (finalize_ && !finalized) MPI_Finalize();
}

void MpiEnv::abort(const std::string& message, int code) const { abort_job(message, code); }

}  // namespace ditto
