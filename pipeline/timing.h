// Timing a video's steps without waiting for the device after each one, device synchronisation
// where a whole measurement needs it, and peak memory.
#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <memory>
#include <vector>

namespace ditto {

void synchronize(const at::Device& device);
// Peak memory of this process: device allocator peak on CUDA, max resident set on CPU (bytes).
int64_t peak_memory_bytes(const at::Device& device);
// Starts a new peak on CUDA (the next peak_memory_bytes is this stage's); the CPU's stays the process's.
void reset_peak_memory(const at::Device& device);
// Hands the caching allocator's unused blocks back to the driver (CUDA; nothing on the CPU).
void release_cached_memory(const at::Device& device);
// Memory a new allocation can still get on the device: on a GPU the driver's free memory plus what
// the caching allocator holds unused; on the CPU MemAvailable, capped by the cgroup's limit.
// --max-memory, when set (> 0), caps it: the operator's budget per rank.
int64_t available_memory_bytes(const at::Device& device);
void set_memory_budget(int64_t bytes);  // 0: none

// The device's dense matrix-multiply rate in `options`' dtype, measured rather than typed in: the
// best of several products of two n x n matrices (n = 8192 on a GPU, 1024 on the CPU), in TFLOP/s.
// What model FLOP utilisation is reported against.
struct MatmulPeak {
  double tflops = 0;
  int64_t n = 0;
};
MatmulPeak measure_matmul_peak(const at::TensorOptions& options);

// Per-step times. On CUDA each mark() records an event on the current stream (no wait) and the
// times are read once, at the end; on the CPU mark() reads the wall clock.
class StepTimer {
 public:
  explicit StepTimer(const at::Device& device);
  ~StepTimer();
  void start();
  void mark();  // the end of a step
  // Seconds of each step since start(), in order (on CUDA: waits once for the last step).
  std::vector<double> seconds();

 private:
  struct Events;
  at::Device device_;
  std::chrono::steady_clock::time_point start_;
  std::vector<double> wall_;  // CPU: seconds since start at each mark
  std::unique_ptr<Events> events_;
};

}  // namespace ditto
