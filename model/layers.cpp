// STDiT3 building blocks; numerics follow the Open-Sora 1.2 reference (see layers.h).
#include "model/layers.h"

#include <ATen/SDPBackend.h>
#include <ATen/core/grad_mode.h>

#include <mutex>
#include <optional>

#include <algorithm>
#include <cmath>
#include <limits>

#include "model/error.h"

#ifdef DITTO_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "model/fused_kernels.h"
#endif

namespace ditto::layers {

at::Tensor timestep_embedding(const at::Tensor& t, int dim, at::ScalarType compute) {
  const int half = dim / 2;
  auto opts = at::TensorOptions().dtype(compute).device(t.device());
  // exp(-ln(max_period) * k / half), computed in float32 as the reference does (float64 runs in float64).
  at::Tensor freqs = at::exp(at::arange(0, half, opts) * (-std::log(10000.0)) / half);
  at::Tensor args = t.to(compute).unsqueeze(1) * freqs.unsqueeze(0);
  at::Tensor emb = at::cat({at::cos(args), at::sin(args)}, -1);
  if (dim % 2) emb = at::cat({emb, at::zeros_like(emb.narrow(1, 0, 1))}, -1);
  return emb;
}

namespace {

// 10000^(-k / (dim/2)) for k < dim/2: the sin-cos embeddings' frequencies.
at::Tensor sincos_frequencies(int dim, const at::TensorOptions& opts) {
  const int half = dim / 2;
  return 1.0 / at::pow(10000.0, at::arange(0, half, opts) / static_cast<double>(half));
}

// coord [...] -> [..., 2 * F]: [sin(coord * f), cos(coord * f)].
at::Tensor sincos(const at::Tensor& coord, const at::Tensor& inv_freq) {
  at::Tensor out = coord.unsqueeze(-1) * inv_freq;
  return at::cat({at::sin(out), at::cos(out)}, -1);
}

}  // namespace

at::Tensor pos_embed_1d(const at::Tensor& positions, int dim, at::ScalarType compute) {
  const auto opts = at::TensorOptions().dtype(compute).device(positions.device());
  return sincos(positions.to(compute), sincos_frequencies(dim, opts));
}

at::Tensor pos_embed_2d(int h, int w, int dim, double scale, int base_size, at::ScalarType compute,
                        const at::Device& device, at::ScalarType freq_dtype) {
  auto opts = at::TensorOptions().dtype(compute).device(device);
  // Each axis gets dim/2 channels: a 1D embedding of width dim/2.
  at::Tensor inv_freq = sincos_frequencies(dim / 2, opts);
  if (freq_dtype == at::kBFloat16 || freq_dtype == at::kHalf) inv_freq = inv_freq.to(freq_dtype).to(compute);
  // Same operation order as the reference: arange / scale, then * (base_size / n).
  at::Tensor grid_h = at::arange(h, opts) / scale * (static_cast<double>(base_size) / h);
  at::Tensor grid_w = at::arange(w, opts) / scale * (static_cast<double>(base_size) / w);
  // Token (i, j) sits at row i, column j; the column coordinate comes first.
  at::Tensor col = grid_w.unsqueeze(0).expand({h, w}).reshape({-1});
  at::Tensor row = grid_h.unsqueeze(1).expand({h, w}).reshape({-1});
  return at::cat({sincos(col, inv_freq), sincos(row, inv_freq)}, -1);
}

std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& freqs, int64_t len) {
  at::Tensor pos = at::arange(len, freqs.options());
  at::Tensor angles = pos.unsqueeze(1) * freqs.unsqueeze(0);  // [len, D/2]
  return {at::cos(angles), at::sin(angles)};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  auto sizes = x.sizes().vec();
  const int64_t d = sizes.back();
  if (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble) {
    // One complex product over the pairs, read in place when they are adjacent in memory (a view of
    // the fused qkv projection is): (x0 + i x1)(cos + i sin).
    const at::Tensor pairs = x.stride(-1) == 1 ? x.unflatten(-1, {d / 2, 2}) : x.contiguous().unflatten(-1, {d / 2, 2});
    const at::Tensor cis = at::complex(cos.to(x.scalar_type()), sin.to(x.scalar_type()));
    return at::view_as_real(at::view_as_complex(pairs) * cis).flatten(-2);
  }
  // 16-bit: the reference's element-wise form in the tensor's own type.
  std::vector<int64_t> pair_shape(sizes.begin(), sizes.end() - 1);
  pair_shape.push_back(d / 2);
  pair_shape.push_back(2);
  at::Tensor xp = x.reshape(pair_shape);
  at::Tensor x0 = xp.select(-1, 0), x1 = xp.select(-1, 1);
  at::Tensor c = cos.to(x.scalar_type()), s = sin.to(x.scalar_type());
  at::Tensor out = at::stack({x0 * c - x1 * s, x1 * c + x0 * s}, -1);
  return out.reshape(sizes);
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // float32 / float64: LibTorch's fused kernel. 16-bit: the reference's form (normalised in float32,
  // cast back, then scaled), which rounds differently from the fused kernel.
  if (compute_type(x.scalar_type()) == x.scalar_type()) return at::rms_norm(x, {x.size(-1)}, weight, eps);
  at::Tensor xf = x.to(compute_type(x.scalar_type()));
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor layer_norm(const at::Tensor& x, double eps) { return at::layer_norm(x, {x.size(-1)}, {}, {}, eps); }

at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return at::addcmul(shift, x, 1 + scale);  // one pass over x: shift + x (1 + scale)
}

at::Tensor modulated_layer_norm(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale, double eps,
                                at::ScalarType out_dtype) {
#ifdef DITTO_CUDA
  // The fused kernel's cases (fused_kernels.h): float32 x and modulation with any 16/32-bit output, or
  // x, modulation and output all bfloat16 / all float16; x contiguous; shift / scale one row of C per
  // sample ([B, 1, .., 1, C], columns contiguous).
  const auto kind = [](at::ScalarType t) {
    return t == at::kBFloat16 ? kernels::DType::BFloat16 : t == at::kHalf ? kernels::DType::Float16 : kernels::DType::Float32;
  };
  const auto x_type = x.scalar_type();
  const bool types = (x_type == at::kFloat && shift.scalar_type() == at::kFloat &&
                      (out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf)) ||
                     ((x_type == at::kBFloat16 || x_type == at::kHalf) && shift.scalar_type() == x_type &&
                      out_dtype == x_type);
  const int64_t C = x.dim() > 0 ? x.size(-1) : 0, B = x.dim() > 1 ? x.size(0) : 0;
  const auto one_row_per_sample = [&](const at::Tensor& m) {
    if (m.device() != x.device() || m.scalar_type() != shift.scalar_type() || m.dim() != x.dim() || m.size(-1) != C ||
        m.stride(-1) != 1 || (m.size(0) != B && m.size(0) != 1) || (m.size(0) > 1 && m.stride(0) != shift.stride(0)))
      return false;
    for (int64_t d = 1; d + 1 < m.dim(); ++d)
      if (m.size(d) != 1) return false;
    return true;
  };
  // The kernel records nothing for autograd: a forward that trains (ditto train) takes LibTorch's ops.
  const bool grad = at::GradMode::is_enabled() && (x.requires_grad() || shift.requires_grad() || scale.requires_grad());
  if (x.is_cuda() && !grad && types && x.dim() >= 2 && x.is_contiguous() && x.numel() > 0 &&
      x.numel() / C <= std::numeric_limits<int32_t>::max() && one_row_per_sample(shift) && one_row_per_sample(scale) &&
      shift.size(0) == scale.size(0)) {
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_dtype));
    const int64_t rows = x.numel() / C;
    const int e = kernels::modulated_layer_norm(x.data_ptr(), shift.data_ptr(), scale.data_ptr(), out.data_ptr(),
                                                kind(x_type), kind(shift.scalar_type()), kind(out_dtype), rows, C, rows / B,
                                                shift.size(0) > 1 ? shift.stride(0) : 0, static_cast<float>(eps),
                                                c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
    if (e != 0) fail("the modulated LayerNorm kernel failed to launch: ", cudaGetErrorString(static_cast<cudaError_t>(e)));
    return out;
  }
#endif
  return modulate(at::layer_norm(x, {x.size(-1)}, {}, {}, eps), shift, scale).to(out_dtype);
}

at::Tensor patchify(const at::Tensor& x, const std::array<int, 3>& patch) {
  if (x.dim() != 5) fail("patchify: x must be [B, C, T, H, W], got ", x.sizes());
  const int64_t pt = patch[0], ph = patch[1], pw = patch[2];
  const int64_t t = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t pad_t = (pt - t % pt) % pt, pad_h = (ph - h % ph) % ph, pad_w = (pw - w % pw) % pw;
  at::Tensor xp = (pad_t || pad_h || pad_w) ? at::constant_pad_nd(x, {0, pad_w, 0, pad_h, 0, pad_t}, 0) : x;
  const int64_t b = x.size(0), c = x.size(1);
  const int64_t gt = (t + pad_t) / pt, gh = (h + pad_h) / ph, gw = (w + pad_w) / pw;
  // [B, C, gt, pt, gh, ph, gw, pw] -> [B, gt, gh, gw, pt, ph, pw, C]
  return xp.reshape({b, c, gt, pt, gh, ph, gw, pw})
      .permute({0, 2, 4, 6, 3, 5, 7, 1})
      .reshape({b, gt, gh * gw, pt * ph * pw * c});
}

at::Tensor embed_patches(const at::Tensor& tokens, const at::Tensor& weight, const at::Tensor& bias) {
  // Conv3d weight [C, Cin, pt, ph, pw] -> [C, (pt, ph, pw, Cin)] to match the token order.
  at::Tensor w = weight.permute({0, 2, 3, 4, 1}).reshape({weight.size(0), -1});
  return at::linear(tokens, w, bias);
}

at::Tensor patch_embed(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                       const std::array<int, 3>& patch) {
  return embed_patches(patchify(x, patch), weight, bias);
}

at::Tensor unpatchify(const at::Tensor& x, const std::array<int, 3>& patch, int64_t out_channels, int64_t grid_t,
                      int64_t grid_h, int64_t grid_w, int64_t tx, int64_t hx, int64_t wx) {
  const int64_t pt = patch[0], ph = patch[1], pw = patch[2];
  const int64_t b = x.size(0);
  // token features are ordered (pt, ph, pw, Co)
  at::Tensor y = x.reshape({b, grid_t, grid_h, grid_w, pt, ph, pw, out_channels})
                     .permute({0, 7, 1, 4, 2, 5, 3, 6})
                     .reshape({b, out_channels, grid_t * pt, grid_h * ph, grid_w * pw});
  return y.narrow(2, 0, tx).narrow(3, 0, hx).narrow(4, 0, wx);
}

namespace {

std::mutex g_attention_mu;
std::string g_attention_backend = "auto";
std::vector<std::string> g_attention_used;

}  // namespace

at::Tensor attention_math(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  {
    std::lock_guard<std::mutex> lock(g_attention_mu);
    if (std::find(g_attention_used.begin(), g_attention_used.end(), "reference-math") == g_attention_used.end())
      g_attention_used.push_back("reference-math");
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  at::Tensor attn = at::matmul(q * scale, k.transpose(-2, -1));
  attn = attn.to(compute_type(attn.scalar_type())).softmax(-1).to(q.scalar_type());
  return at::matmul(attn, v);
}

namespace {

const char* sdp_kernel_name(int64_t choice) {
  switch (static_cast<at::SDPBackend>(choice)) {
    case at::SDPBackend::math: return "math";
    case at::SDPBackend::flash_attention: return "flash";
    case at::SDPBackend::efficient_attention: return "efficient";
    case at::SDPBackend::cudnn_attention: return "cudnn";
    case at::SDPBackend::overrideable: return "overrideable";
    default: return "none";
  }
}

// SDPA on these inputs, noting which kernel LibTorch chose (the same choice SDPA makes inside).
at::Tensor sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& m) {
  const std::optional<at::Tensor> mask = m.defined() ? std::optional<at::Tensor>(m) : std::nullopt;
  int64_t choice = -1;
  try {
    choice = at::_fused_sdp_choice(q, k, v, mask);
  } catch (const std::exception&) {
    choice = -1;
  }
  if (choice < 0)
    fail("attention: the '", attention_backend(), "' kernel (--attention) cannot run these inputs (",
         c10::toString(q.scalar_type()), ", head dim ", q.size(-1), ", ", q.size(-2), " queries, on ", q.device().str(),
         m.defined() ? ", with a key mask" : "", "); use --attention auto");
  {
    const std::string name = sdp_kernel_name(choice);
    std::lock_guard<std::mutex> lock(g_attention_mu);
    if (std::find(g_attention_used.begin(), g_attention_used.end(), name) == g_attention_used.end())
      g_attention_used.push_back(name);
  }
  return m.defined() ? at::scaled_dot_product_attention(q, k, v, m) : at::scaled_dot_product_attention(q, k, v);
}

}  // namespace

std::vector<std::string> attention_backend_names() { return {"auto", "flash", "efficient", "cudnn", "math"}; }

void set_attention_backend(const std::string& name) {
  const auto names = attention_backend_names();
  if (std::find(names.begin(), names.end(), name) == names.end())
    fail("--attention: unknown kernel '", name, "' (auto, flash, efficient, cudnn, math)");
  const bool any = name == "auto";
  auto& ctx = at::globalContext();
  ctx.setSDPUseFlash(any || name == "flash");
  ctx.setSDPUseMemEfficient(any || name == "efficient");
  ctx.setSDPUseCuDNN(any || name == "cudnn");
  ctx.setSDPUseMath(any || name == "math");
  std::lock_guard<std::mutex> lock(g_attention_mu);
  g_attention_backend = name;
}

std::string attention_backend() {
  std::lock_guard<std::mutex> lock(g_attention_mu);
  return g_attention_backend;
}

std::vector<std::string> attention_kernels_used() {
  std::lock_guard<std::mutex> lock(g_attention_mu);
  return g_attention_used;
}

void reset_attention_kernels_used() {
  std::lock_guard<std::mutex> lock(g_attention_mu);
  g_attention_used.clear();
}

at::Tensor attention_in_batches(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const at::Tensor& key_mask, int64_t max_batch) {
  if (max_batch <= 0) fail("attention_in_batches: max_batch must be positive, got ", max_batch);
  at::Tensor m;
  if (key_mask.defined()) m = key_mask.to(at::kBool).reshape({key_mask.size(0), 1, 1, key_mask.size(1)});
  const int64_t n = q.size(0);
  if (n <= max_batch) return sdpa(q, k, v, m);
  std::vector<at::Tensor> parts;
  for (int64_t i = 0; i < n; i += max_batch) {
    const int64_t len = std::min(max_batch, n - i);
    // A mask of batch 1 (or a broadcast one) applies to every chunk as it is.
    const at::Tensor mi = !m.defined() || m.size(0) != n ? m : m.narrow(0, i, len);
    parts.push_back(sdpa(q.narrow(0, i, len), k.narrow(0, i, len), v.narrow(0, i, len), mi));
  }
  return at::cat(parts, 0);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& key_mask) {
  // The CUDA kernels behind SDPA (flash, memory-efficient) put the batch in a grid dimension, which
  // CUDA caps at 65535 (pytorch/pytorch#146704): temporal attention over B x S sequences reaches that
  // at, e.g., 1024 frames of 64 tokens. Larger batches run in chunks.
  const int64_t limit = q.is_cuda() ? 65535 : std::numeric_limits<int64_t>::max();
  return attention_in_batches(q, k, v, key_mask, limit);
}

at::Tensor mlp(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
               const at::Tensor& b2) {
  at::Tensor h = at::linear(x, w1, b1);
  at::gelu_(h, "tanh");  // in place: no second hidden-width buffer
  return at::linear(h, w2, b2);
}

std::vector<int64_t> memory_order(const at::Tensor& x) {
  // Size-1 dimensions first (their stride means nothing), then the others by decreasing stride.
  std::vector<int64_t> order, rest;
  for (int64_t d = 0; d < x.dim(); ++d) (x.size(d) == 1 ? order : rest).push_back(d);
  std::stable_sort(rest.begin(), rest.end(), [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
  order.insert(order.end(), rest.begin(), rest.end());
  return order;
}

at::Tensor linear_in_memory_order(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const std::vector<int64_t> order = memory_order(x);
  const at::Tensor physical = x.permute(order);
  if (order.back() != x.dim() - 1 || !physical.is_contiguous()) return at::linear(x, w, b);
  std::vector<int64_t> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[order[i]] = static_cast<int64_t>(i);
  // As one 2-D product (at::linear fuses the bias only for 2-D and 3-D inputs).
  std::vector<int64_t> shape = physical.sizes().vec();
  shape.back() = w.size(0);
  return at::linear(physical.reshape({-1, x.size(-1)}), w, b).view(shape).permute(inverse);
}

}  // namespace ditto::layers
