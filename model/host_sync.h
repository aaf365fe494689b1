// Reads of device memory by the host on ditto's sampling path. On a GPU each one waits for the
// device's queued work, so the hot path makes as few as possible (one per cache decision); going
// through read_to_host() counts them, and benchmarks and tests report the count per step.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>

namespace ditto {

// t copied to the host (a CPU tensor is returned as it is), counted as one read.
at::Tensor read_to_host(const at::Tensor& t);
// Reads counted so far in this process.
int64_t host_reads();

}  // namespace ditto
