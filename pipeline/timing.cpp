// Device synchronisation, step timing and peak-memory queries (CUDA parts only in CUDA builds).
#include "pipeline/timing.h"

#include <sys/resource.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <string>
#ifdef DITTO_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace ditto {

void synchronize(const at::Device& device) {
#ifdef DITTO_CUDA
  if (device.is_cuda()) c10::cuda::device_synchronize();
#else
  (void)device;
#endif
}

int64_t peak_memory_bytes(const at::Device& device) {
#ifdef DITTO_CUDA
  if (device.is_cuda()) {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  }
#endif
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<int64_t>(ru.ru_maxrss) * 1024;
}

void reset_peak_memory(const at::Device& device) {
#ifdef DITTO_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  (void)device;
}

void release_cached_memory(const at::Device& device) {
#ifdef DITTO_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  (void)device;
}

namespace {

int64_t g_budget = 0;  // --max-memory

int64_t measured_available_bytes(const at::Device& device) {
#ifdef DITTO_CUDA
  if (device.is_cuda()) {
    size_t free = 0, total = 0;
    c10::cuda::CUDAGuard guard(device.index());
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return std::numeric_limits<int64_t>::max();
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return static_cast<int64_t>(free) + stats.reserved_bytes[agg].current - stats.allocated_bytes[agg].current;
  }
#endif
  int64_t available = std::numeric_limits<int64_t>::max();
  std::ifstream meminfo("/proc/meminfo");
  for (std::string key; meminfo >> key;) {
    int64_t kb = 0;
    meminfo >> kb;
    if (key == "MemAvailable:") available = kb * 1024;
    meminfo.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  // A cgroup v2 limit (containers, batch schedulers) caps what this process may take.
  std::ifstream max_file("/sys/fs/cgroup/memory.max"), current_file("/sys/fs/cgroup/memory.current");
  std::string max_text;
  int64_t current = 0;
  if (max_file >> max_text && max_text != "max" && current_file >> current) {
    try {
      available = std::min<int64_t>(available, std::stoll(max_text) - current);
    } catch (const std::exception&) {
    }
  }
  return available;
}

}  // namespace

void set_memory_budget(int64_t bytes) { g_budget = bytes > 0 ? bytes : 0; }

int64_t available_memory_bytes(const at::Device& device) {
  const int64_t measured = measured_available_bytes(device);
  return g_budget > 0 ? std::min(g_budget, measured) : measured;
}

MatmulPeak measure_matmul_peak(const at::TensorOptions& options) {
  const bool gpu = options.device().is_cuda();
  MatmulPeak p;
  p.n = gpu ? 8192 : 1024;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const at::Tensor a = at::randn({p.n, p.n}, gen, at::kFloat).to(options.device(), options.dtype().toScalarType());
  const at::Tensor b = at::randn({p.n, p.n}, gen, at::kFloat).to(options.device(), options.dtype().toScalarType());
  at::Tensor c = at::mm(a, b);
  synchronize(options.device());
  double best = std::numeric_limits<double>::infinity();
  const int reps = gpu ? 10 : 5, per_rep = gpu ? 10 : 1;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < per_rep; ++i) at::mm_out(c, a, b);
    synchronize(options.device());
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / per_rep);
  }
  p.tflops = 2.0 * static_cast<double>(p.n) * p.n * p.n / best / 1e12;
  return p;
}

struct StepTimer::Events {
#ifdef DITTO_CUDA
  std::vector<std::unique_ptr<at::cuda::CUDAEvent>> marks;  // marks[0]: the start
#endif
};

StepTimer::StepTimer(const at::Device& device) : device_(device), events_(std::make_unique<Events>()) {}
StepTimer::~StepTimer() = default;

void StepTimer::start() {
  wall_.clear();
  start_ = std::chrono::steady_clock::now();
#ifdef DITTO_CUDA
  events_->marks.clear();
  if (device_.is_cuda()) mark();
#endif
}

void StepTimer::mark() {
#ifdef DITTO_CUDA
  if (device_.is_cuda()) {
    events_->marks.push_back(std::make_unique<at::cuda::CUDAEvent>(cudaEventDefault));
    events_->marks.back()->record();
    return;
  }
#endif
  wall_.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
}

std::vector<double> StepTimer::seconds() {
  std::vector<double> out;
#ifdef DITTO_CUDA
  if (device_.is_cuda()) {
    auto& m = events_->marks;
    if (m.size() > 1) m.back()->synchronize();
    for (size_t i = 1; i < m.size(); ++i) out.push_back(m[i - 1]->elapsed_time(*m[i]) / 1e3);
    return out;
  }
#endif
  for (size_t i = 0; i < wall_.size(); ++i) out.push_back(wall_[i] - (i ? wall_[i - 1] : 0.0));
  return out;
}

}  // namespace ditto
