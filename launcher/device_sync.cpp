// Device synchronisation and peak-memory queries (CUDA parts only in CUDA builds).
#include "launcher/device_sync.h"

#include <sys/resource.h>
#ifdef DITTO_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
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

}  // namespace ditto
