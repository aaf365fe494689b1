// The NCCL backend (CUDA builds): collectives on the communicator's own CUDA stream, ordered against
// the compute stream with events, and a watchdog that ends the job when a collective fails
// asynchronously or does not finish within the timeout (a dead peer), instead of hanging it.
#pragma once
#include <mpi.h>

#include <memory>

#include "dist/communicator.h"

namespace ditto {

// Creates a communicator over the ranks of `mpi_comm` (the unique id is made on its rank 0 and
// broadcast over MPI). Every rank must use its own GPU. timeout_s: how long a collective may take.
std::unique_ptr<Communicator> make_nccl_communicator(MPI_Comm mpi_comm, int device, double timeout_s);
bool nccl_available();  // false in a CPU-only (DITTO_CUDA=OFF) build

}  // namespace ditto
