// ditto's CUDA kernels (see fused_kernels.h).
#include "model/fused_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

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
__device__ inline float load(const float* p) { return *p; }
__device__ inline float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ inline float load(const __half* p) { return __half2float(*p); }

// One block per row; the row is read from DRAM once (the later passes hit the cache).
template <typename In, typename Mod, typename Out>
__global__ void modulated_layer_norm_kernel(const In* __restrict__ x, const Mod* __restrict__ shift,
                                            const Mod* __restrict__ scale, Out* __restrict__ out, int64_t cols,
                                            int64_t rows_per_batch, int64_t mod_stride, float eps) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const In* xr = x + row * cols;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += load(xr + c);
  const float mean = block_sum(s, shared) / static_cast<float>(cols);
  float q = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float d = load(xr + c) - mean;
    q += d * d;
  }
  const float rstd = rsqrtf(block_sum(q, shared) / static_cast<float>(cols) + eps);
  const int64_t b = row / rows_per_batch;
  const Mod* sh = shift + b * mod_stride;
  const Mod* sc = scale + b * mod_stride;
  Out* o = out + row * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
    store(o + c, (load(xr + c) - mean) * rstd * (1.0f + load(sc + c)) + load(sh + c));
}

template <typename In, typename Mod, typename Out>
cudaError_t launch(const void* x, const void* shift, const void* scale, void* out, int64_t rows, int64_t cols,
                   int64_t rows_per_batch, int64_t mod_stride, float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  modulated_layer_norm_kernel<In, Mod, Out><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      static_cast<const In*>(x), static_cast<const Mod*>(shift), static_cast<const Mod*>(scale), static_cast<Out*>(out),
      cols, rows_per_batch, mod_stride, eps);
  return cudaGetLastError();
}

}  // namespace

int modulated_layer_norm(const void* x, const void* shift, const void* scale, void* out, DType x_type,
                         DType mod_type, DType out_type, int64_t rows, int64_t cols, int64_t rows_per_batch,
                         int64_t mod_batch_stride, float eps, void* stream) {
  if (rows < 0 || rows > 0x7fffffff || cols <= 0 || rows_per_batch <= 0) return static_cast<int>(cudaErrorInvalidValue);
  const auto s = static_cast<cudaStream_t>(stream);
  const auto run = [&](auto in, auto mod, auto o) {
    using In = std::remove_pointer_t<decltype(in)>;
    using Mod = std::remove_pointer_t<decltype(mod)>;
    using Out = std::remove_pointer_t<decltype(o)>;
    return static_cast<int>(launch<In, Mod, Out>(x, shift, scale, out, rows, cols, rows_per_batch, mod_batch_stride, eps, s));
  };
  if (x_type == DType::Float32 && mod_type == DType::Float32) {
    switch (out_type) {
      case DType::BFloat16: return run(static_cast<float*>(nullptr), static_cast<float*>(nullptr), static_cast<__nv_bfloat16*>(nullptr));
      case DType::Float16: return run(static_cast<float*>(nullptr), static_cast<float*>(nullptr), static_cast<__half*>(nullptr));
      default: return run(static_cast<float*>(nullptr), static_cast<float*>(nullptr), static_cast<float*>(nullptr));
    }
  }
  if (x_type == DType::BFloat16 && mod_type == DType::BFloat16 && out_type == DType::BFloat16)
    return run(static_cast<__nv_bfloat16*>(nullptr), static_cast<__nv_bfloat16*>(nullptr), static_cast<__nv_bfloat16*>(nullptr));
  if (x_type == DType::Float16 && mod_type == DType::Float16 && out_type == DType::Float16)
    return run(static_cast<__half*>(nullptr), static_cast<__half*>(nullptr), static_cast<__half*>(nullptr));
  return static_cast<int>(cudaErrorNotSupported);
}

}  // namespace ditto::kernels
