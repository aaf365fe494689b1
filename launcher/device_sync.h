// Waiting for a device's queued work, so that wall-clock timings measure the work itself.
#pragma once
#include <ATen/ATen.h>

namespace ditto {
void synchronize(const at::Device& device);
// Peak memory of this process: device allocator peak on CUDA, max resident set on CPU (bytes).
int64_t peak_memory_bytes(const at::Device& device);
}  // namespace ditto
