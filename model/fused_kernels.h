// ditto's own CUDA kernels, behind a plain C++ interface (no LibTorch types: the .cu file is compiled by
// nvcc without LibTorch's headers). layers.h's functions call them for the inputs they cover and
// compute the same thing with LibTorch's operators otherwise.
#pragma once
#include <cstdint>

namespace ditto::kernels {

enum class DType { Float32, BFloat16, Float16 };

// adaLN's modulated LayerNorm in one pass over x: for each row r (of `cols` values) of x (rows
// contiguous), out[r] = (x[r] - mean) / sqrt(var + eps) * (1 + scale[b]) + shift[b], with
// b = r / rows_per_batch and shift[b] / scale[b] starting at b * mod_batch_stride (their columns
// contiguous). Everything computed in float32 (mean first, then the centred variance, as LibTorch's
// LayerNorm), rounded once to out_type. Types covered: x and the modulation float32 with any out_type
// (Wan's float32 residual stream), or x, modulation and out all bfloat16 or all float16 (STDiT3's).
// `stream`: a cudaStream_t. Returns a cudaError_t (0: launched; cudaErrorNotSupported for other types).
int modulated_layer_norm(const void* x, const void* shift, const void* scale, void* out, DType x_type,
                         DType mod_type, DType out_type, int64_t rows, int64_t cols, int64_t rows_per_batch,
                         int64_t mod_batch_stride, float eps, void* stream);

}  // namespace ditto::kernels
