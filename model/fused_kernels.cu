// ditto's CUDA kernels (see fused_kernels.h).
#include "model/fused_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace ditto::kernels {

namespace {

constexpr int kThreads = 256;

// The sum of v over the block (every thread gets it). `shared`: 32 floats.
__device__ float block_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // shared may still be read by the previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? shared[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ inline void store(float* p, float v) { *p = v; }
__device__ inline void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ inline void store(__half* p, float v) { *p = __float2half_rn(v); }

// One block per row; the row is read from DRAM once (the later passes hit the cache).
template <typename Out>
__global__ void modulated_layer_norm_kernel(const float* __restrict__ x, const float* __restrict__ shift,
                                            const float* __restrict__ scale, Out* __restrict__ out, int64_t cols,
                                            int64_t rows_per_batch, int64_t mod_stride, float eps) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const float* xr = x + row * cols;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
  const float mean = block_sum(s, shared) / static_cast<float>(cols);
  float q = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = xr[c] - mean;
    q += d * d;
  }
  const float rstd = rsqrtf(block_sum(q, shared) / static_cast<float>(cols) + eps);
  const int64_t b = row / rows_per_batch;
  const float* sh = shift + b * mod_stride;
  const float* sc = scale + b * mod_stride;
  Out* o = out + row * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) store(o + c, (xr[c] - mean) * rstd * (1.0f + sc[c]) + sh[c]);
}

template <typename Out>
cudaError_t launch(const float* x, const float* shift, const float* scale, void* out, int64_t rows, int64_t cols,
                   int64_t rows_per_batch, int64_t mod_stride, float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  modulated_layer_norm_kernel<Out><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      x, shift, scale, static_cast<Out*>(out), cols, rows_per_batch, mod_stride, eps);
  return cudaGetLastError();
}

}  // namespace

int modulated_layer_norm(const float* x, const float* shift, const float* scale, void* out, OutType out_type,
                         int64_t rows, int64_t cols, int64_t rows_per_batch, int64_t mod_batch_stride, float eps,
                         void* stream) {
  if (rows < 0 || rows > 0x7fffffff || cols <= 0 || rows_per_batch <= 0) return static_cast<int>(cudaErrorInvalidValue);
  const auto s = static_cast<cudaStream_t>(stream);
  switch (out_type) {
    case OutType::BFloat16:
      return launch<__nv_bfloat16>(x, shift, scale, out, rows, cols, rows_per_batch, mod_batch_stride, eps, s);
    case OutType::Float16:
      return launch<__half>(x, shift, scale, out, rows, cols, rows_per_batch, mod_batch_stride, eps, s);
    default:
      return launch<float>(x, shift, scale, out, rows, cols, rows_per_batch, mod_batch_stride, eps, s);
  }
}

}  // namespace ditto::kernels
