// The ditto command: MPI start-up, then one of the launcher's commands.
#include "launcher/commands.h"

int main(int argc, char** argv) {
  ditto::MpiEnv mpi(&argc, &argv);
  return ditto::run_command(argc, argv, mpi);
}
