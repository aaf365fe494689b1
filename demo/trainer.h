// The demo's trainer behind `ditto train` (see trainer.cpp for what it trains and how).
#pragma once
#include <string>
#include <vector>

#include "dist/mpi_env.h"

namespace ditto {
// `ditto train ARGS`: returns the exit code; errors are thrown as ditto::Error.
int run_train(const std::vector<std::string>& args, const MpiEnv& mpi);
}  // namespace ditto
