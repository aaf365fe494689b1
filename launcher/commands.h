// The ditto command's table: each command is a function over its arguments.
#pragma once
#include <string>
#include <vector>

#include "dist/mpi_env.h"

namespace ditto {

// Command entry points. Each returns the process exit code; errors are thrown as ditto::Error.
int run_sample(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_forward(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_render(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_profile(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_calibrate(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_encode(const std::vector<std::string>& args, const MpiEnv& mpi);
int run_decode(const std::vector<std::string>& args, const MpiEnv& mpi);

// `ditto COMMAND ...`: dispatches to a command and turns exceptions into a message and exit code
// (ending every rank of a multi-rank job).
int run_command(int argc, char** argv, const MpiEnv& mpi);

}  // namespace ditto
