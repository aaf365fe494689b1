// The functional building blocks of STDiT3 (Open-Sora 1.2 `opensora/models/layers/blocks.py`),
// written as free functions over ATen tensors so each can be tested against a float64 reference.
#pragma once
#include <ATen/ATen.h>

#include <array>
#include <utility>
#include <vector>

namespace ditto::layers {

// The dtype a reduction or an embedding is computed in: float32, or float64 for a float64 run.
inline at::ScalarType compute_type(at::ScalarType run) { return run == at::kDouble ? at::kDouble : at::kFloat; }

// GLIDE/DiT sinusoid: [cos(t*f_k), sin(t*f_k)], f_k = exp(-ln(10000) k / (dim/2)). t: [N] -> [N, dim].
at::Tensor timestep_embedding(const at::Tensor& t, int dim, at::ScalarType compute);

// PositionEmbedding2D for an h x w token grid, row-major tokens: [S, dim]. The first dim/2 channels
// encode the column (w) coordinate and the last dim/2 the row (h) coordinate, each [sin, cos],
// with coordinates scaled as arange(n) / scale * (base_size / n).
// freq_dtype: the reference keeps the frequencies in a buffer cast to the model dtype, so 16-bit
// models see them rounded; the angles and sin/cos are then computed in `compute`.
at::Tensor pos_embed_2d(int h, int w, int dim, double scale, int base_size, at::ScalarType compute,
                        const at::Device& device, at::ScalarType freq_dtype = at::kFloat);

// 1D sin-cos embedding (Open-Sora's get_1d_sincos_pos_embed): positions [...] -> [..., dim] =
// [sin(p * f_k), cos(p * f_k)], f_k = 10000^(-k / (dim/2)), k < dim/2; computed in `compute`.
at::Tensor pos_embed_1d(const at::Tensor& positions, int dim, at::ScalarType compute);

// RoPE (rotary-embedding-torch 0.5.3 style: interleaved pairs). freqs: [D/2]. Returns (cos, sin),
// each [len, D/2], angle = position * freq computed in freqs' dtype.
std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& freqs, int64_t len);
// x: [..., len, D]; rotates each pair (x0, x1) -> (x0 c - x1 s, x1 c + x0 s).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// LlamaRMSNorm: normalise in (at least) float32, cast back, then multiply by weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps = 1e-6);
// LayerNorm over the last dim without affine parameters.
at::Tensor layer_norm(const at::Tensor& x, double eps = 1e-6);
// t2i_modulate: x * (1 + scale) + shift.
at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale);
// adaLN: modulate(LayerNorm without affine over the last dim (x), shift, scale), cast to out_dtype,
// computed in x's dtype. On CUDA, a contiguous x [B, ..., C] with shift / scale one row per sample
// ([B, 1, .., 1, C], columns contiguous), float32 in (any output) or 16-bit throughout, takes one
// fused kernel (model/fused_kernels.h: x read once, everything in float32, the result rounded once);
// other inputs LibTorch's layer_norm, addcmul and cast (16-bit: the LayerNorm's output rounded first,
// as the reference modules).
at::Tensor modulated_layer_norm(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps,
                                at::ScalarType out_dtype);

// Cuts a video into patch tokens, zero-padding right/bottom/back first:
// x: [B, C, T, H, W] -> [B, T', H'*W', pt*ph*pw*C], each token's values ordered (pt, ph, pw, C)
// (the order unpatchify reads, so a latent can live in token form across sampling steps).
at::Tensor patchify(const at::Tensor& x, const std::array<int, 3>& patch);
// PatchEmbed3D's Conv3d (kernel = stride = patch) applied to patchify's tokens, as one matmul:
// tokens [..., pt*ph*pw*Cin] -> [..., C]. weight: [C, Cin, pt, ph, pw].
at::Tensor embed_patches(const at::Tensor& tokens, const at::Tensor& weight, const at::Tensor& bias);
// PatchEmbed3D on a video: x [B, Cin, T, H, W] -> [B, T', H'*W', C].
at::Tensor patch_embed(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                       const std::array<int, 3>& patch);
// Inverse layout of patch_embed's grid for the final layer's output:
// x: [B, T', H'*W', pt*ph*pw*Co] -> [B, Co, T'*pt, H'*ph, W'*pw], cropped to [Tx, Hx, Wx].
at::Tensor unpatchify(const at::Tensor& x, const std::array<int, 3>& patch, int64_t out_channels, int64_t grid_t,
                      int64_t grid_h, int64_t grid_w, int64_t tx, int64_t hx, int64_t wx);

// The reference's explicit attention (its path for temporal attention): (q * scale) k^T in the
// input dtype, softmax in float32, cast back, then @ v.
at::Tensor attention_math(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v);

// Which kernel runs scaled dot-product attention: "auto" (LibTorch picks per call, the default),
// or one forced for every call: "flash", "efficient" (memory-efficient), "cudnn", "math". Process-wide
// (--attention). A forced kernel that cannot run a call's inputs is an Error naming it.
void set_attention_backend(const std::string& name);
std::string attention_backend();
std::vector<std::string> attention_backend_names();
// The kernels SDPA has run in this process, in the order first seen ("flash", "efficient", "cudnn",
// "math"), for reports; and forgetting them.
std::vector<std::string> attention_kernels_used();
void reset_attention_kernels_used();

// Scaled dot-product attention with the default 1/sqrt(D) scale. q: [N, H, Lq, D], k/v: [N, H, Lk, D].
// key_mask (optional, bool [N, Lk]): true where a key may be attended to.
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_mask = {});
// The same, computed over the batch in chunks of at most max_batch (on CUDA, attention() chunks at
// the 65535 that the kernels' launch grid allows).
at::Tensor attention_in_batches(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_mask,
                                int64_t max_batch);

// timm Mlp with tanh-GELU: fc2(gelu_tanh(fc1(x))).
at::Tensor mlp(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
               const at::Tensor& b2);

// The dimensions of x from outermost to innermost in memory (a permutation of 0..dim-1).
std::vector<int64_t> memory_order(const at::Tensor& x);
// at::linear over the last dimension of x computed in x's memory order: a dense x whose dimensions
// are permuted (a layout switch may hand over such a view) is read in place, not copied first. The
// result has x's shape and x's memory order.
at::Tensor linear_in_memory_order(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);

}  // namespace ditto::layers
