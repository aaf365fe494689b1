// GoogleTest main for tests that run under mpirun: MPI for the whole process, results printed by
// rank 0 only (every rank's failures still fail the job through its exit code).
#include <gtest/gtest.h>

#include <mpi.h>

#include "dist/mpi_env.h"

int main(int argc, char** argv) {
  ditto::MpiEnv mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (mpi.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  // A failure on any rank fails every rank's exit code.
  int any = rc != 0, all = 0;
  MPI_Allreduce(&any, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return all;
}
