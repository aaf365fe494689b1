// Each STDiT3 building block against an independent float64 reference written here.
#include <gtest/gtest.h>

#include <cmath>

#include "model/layers.h"

using namespace ditto;

namespace {

at::TensorOptions f64() { return at::TensorOptions().dtype(at::kDouble); }

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// softmax(q k^T / sqrt(D)) v with an optional boolean key mask, by explicit loops.
at::Tensor naive_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
  const int64_t N = q.size(0), H = q.size(1), Lq = q.size(2), Lk = k.size(2), D = q.size(3);
  at::Tensor out = at::zeros({N, H, Lq, D}, f64());
  auto qa = q.accessor<double, 4>(), ka = k.accessor<double, 4>(), va = v.accessor<double, 4>();
  auto oa = out.accessor<double, 4>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < Lq; ++i) {
        std::vector<double> s(Lk);
        double mx = -1e300;
        for (int64_t j = 0; j < Lk; ++j) {
          if (mask.defined() && !mask[n][j].item<bool>()) {
            s[j] = -INFINITY;
            continue;
          }
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qa[n][h][i][d] * ka[n][h][j][d];
          s[j] = dot / std::sqrt(static_cast<double>(D));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (auto& x : s) z += (x = std::exp(x - mx));
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < Lk; ++j) acc += s[j] / z * va[n][h][j][d];
          oa[n][h][i][d] = acc;
        }
      }
  return out;
}

}  // namespace

TEST(Layers, AttentionMatchesNaiveSoftmax) {
  at::manual_seed(1);
  at::Tensor q = at::randn({2, 3, 5, 8}, f64()), k = at::randn({2, 3, 7, 8}, f64()), v = at::randn({2, 3, 7, 8}, f64());
  at::Tensor ref = naive_attention(q, k, v, {});
  EXPECT_LT(max_abs_diff(layers::attention(q, k, v), ref), 1e-12);
  EXPECT_LT(max_abs_diff(layers::attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat)), ref), 1e-5);
}

TEST(Layers, AttentionKeyMaskExcludesKeys) {
  at::manual_seed(2);
  at::Tensor q = at::randn({2, 2, 4, 8}, f64()), k = at::randn({2, 2, 6, 8}, f64()), v = at::randn({2, 2, 6, 8}, f64());
  at::Tensor mask = at::tensor({1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0}, at::kLong).to(at::kBool).reshape({2, 6});
  at::Tensor ref = naive_attention(q, k, v, mask);
  EXPECT_LT(max_abs_diff(layers::attention(q, k, v, mask), ref), 1e-12);
}

TEST(Layers, AttentionInBatchesEqualsTheWholeBatch) {
  // Chunks of 2 over a batch of 5 (the last chunk short), with a per-element key mask, a mask of
  // batch 1 shared by every element, and none: each against the float64 loops.
  at::manual_seed(3);
  at::Tensor q = at::randn({5, 2, 3, 4}, f64()), k = at::randn({5, 2, 6, 4}, f64()), v = at::randn({5, 2, 6, 4}, f64());
  at::Tensor mask = at::rand({5, 6}, f64()) < 0.6;
  mask.select(1, 0).fill_(true);  // every row keeps a key
  const at::Tensor shared = mask.narrow(0, 0, 1);
  EXPECT_LT(max_abs_diff(layers::attention_in_batches(q, k, v, mask, 2), naive_attention(q, k, v, mask)), 1e-12);
  EXPECT_LT(max_abs_diff(layers::attention_in_batches(q, k, v, shared, 2), naive_attention(q, k, v, shared.expand({5, 6}))),
            1e-12);
  EXPECT_LT(max_abs_diff(layers::attention_in_batches(q, k, v, {}, 2), naive_attention(q, k, v, {})), 1e-12);
  EXPECT_LT(max_abs_diff(layers::attention_in_batches(q, k, v, mask, 5), naive_attention(q, k, v, mask)), 1e-12);
}

TEST(Layers, RmsNormLayerNormModulate) {
  at::manual_seed(3);
  at::Tensor x = at::randn({4, 16}, f64()), w = at::randn({16}, f64());
  at::Tensor ms = (x * x).mean(-1, true);
  EXPECT_LT(max_abs_diff(layers::rms_norm(x, w), w * x / at::sqrt(ms + 1e-6)), 1e-14);
  at::Tensor mu = x.mean(-1, true), var = ((x - mu) * (x - mu)).mean(-1, true);
  EXPECT_LT(max_abs_diff(layers::layer_norm(x), (x - mu) / at::sqrt(var + 1e-6)), 1e-12);
  at::Tensor m = layers::modulate(at::full({1}, 2.0, f64()), at::full({1}, 0.5, f64()), at::full({1}, 0.25, f64()));
  EXPECT_DOUBLE_EQ(m.item<double>(), 3.0);  // 2 * (1 + 0.25) + 0.5
}

TEST(Layers, MlpUsesTanhGelu) {
  at::manual_seed(4);
  at::Tensor x = at::randn({3, 4}, f64()), w1 = at::randn({5, 4}, f64()), b1 = at::randn({5}, f64());
  at::Tensor w2 = at::randn({2, 5}, f64()), b2 = at::randn({2}, f64());
  at::Tensor h = x.matmul(w1.t()) + b1;
  at::Tensor g = 0.5 * h * (1 + at::tanh(std::sqrt(2.0 / M_PI) * (h + 0.044715 * h * h * h)));
  EXPECT_LT(max_abs_diff(layers::mlp(x, w1, b1, w2, b2), g.matmul(w2.t()) + b2), 1e-12);
}

TEST(Layers, TimestepEmbeddingIsCosThenSin) {
  at::Tensor t = at::tensor({0.0, 500.5}, f64());
  at::Tensor e = layers::timestep_embedding(t, 8, at::kDouble);
  ASSERT_EQ(e.sizes(), at::IntArrayRef({2, 8}));
  for (int b = 0; b < 2; ++b)
    for (int k = 0; k < 4; ++k) {
      const double f = std::exp(-std::log(10000.0) * k / 4.0), a = t[b].item<double>() * f;
      EXPECT_NEAR(e[b][k].item<double>(), std::cos(a), 1e-12);
      EXPECT_NEAR(e[b][4 + k].item<double>(), std::sin(a), 1e-12);
    }
}

TEST(Layers, PositionEmbeddingColumnFirstSinThenCos) {
  const int h = 2, w = 3, dim = 8, base = 2;  // base_size = round(sqrt(6)) = 2
  const double scale = 1.5;
  at::Tensor e = layers::pos_embed_2d(h, w, dim, scale, base, at::kDouble, at::kCPU);
  ASSERT_EQ(e.sizes(), at::IntArrayRef({6, 8}));
  const double inv_freq[2] = {1.0, 1.0 / 100.0};  // 1 / 10000^(k/4), k = 0, 2
  for (int i = 0; i < h; ++i)
    for (int j = 0; j < w; ++j) {
      const double col = j / scale * (static_cast<double>(base) / w), row = i / scale * (static_cast<double>(base) / h);
      const double expect[8] = {std::sin(col * inv_freq[0]), std::sin(col * inv_freq[1]), std::cos(col * inv_freq[0]),
                                std::cos(col * inv_freq[1]), std::sin(row * inv_freq[0]), std::sin(row * inv_freq[1]),
                                std::cos(row * inv_freq[0]), std::cos(row * inv_freq[1])};
      for (int d = 0; d < 8; ++d) EXPECT_NEAR(e[i * w + j][d].item<double>(), expect[d], 1e-12) << i << "," << j << "," << d;
    }
}

TEST(Layers, RopeIsComplexRotationOfInterleavedPairs) {
  at::manual_seed(5);
  const int T = 5, D = 6;
  at::Tensor freqs = at::tensor({1.0, 0.1, 0.01}, f64());
  at::Tensor x = at::randn({2, 3, T, D}, f64());
  auto [c, s] = layers::rope_tables(freqs, T);
  at::Tensor y = layers::apply_rope(x, c, s);
  for (int n = 0; n < 2; ++n)
    for (int t = 0; t < T; ++t)
      for (int p = 0; p < D / 2; ++p) {
        const std::complex<double> z(x[n][1][t][2 * p].item<double>(), x[n][1][t][2 * p + 1].item<double>());
        const std::complex<double> r = z * std::polar(1.0, t * freqs[p].item<double>());
        EXPECT_NEAR(y[n][1][t][2 * p].item<double>(), r.real(), 1e-12);
        EXPECT_NEAR(y[n][1][t][2 * p + 1].item<double>(), r.imag(), 1e-12);
      }
}

TEST(Layers, PatchEmbedEqualsPaddedConv3d) {
  at::manual_seed(6);
  const std::array<int, 3> patch{1, 2, 2};
  at::Tensor x = at::randn({2, 4, 3, 5, 7}, f64());  // H and W odd: padded right/bottom
  at::Tensor w = at::randn({16, 4, 1, 2, 2}, f64()), b = at::randn({16}, f64());
  at::Tensor out = layers::patch_embed(x, w, b, patch);  // [B, T', S, C]
  at::Tensor ref = at::conv3d(at::constant_pad_nd(x, {0, 1, 0, 1}), w, b, {1, 2, 2});  // [B, C, T', H', W']
  ref = ref.flatten(3).permute({0, 2, 3, 1});
  ASSERT_EQ(out.sizes(), ref.sizes());
  EXPECT_LT(max_abs_diff(out, ref), 1e-12);
}

TEST(Layers, UnpatchifyInvertsPatchLayoutAndCrops) {
  at::manual_seed(7);
  const std::array<int, 3> patch{1, 2, 2};
  const int64_t B = 2, Co = 3, gt = 2, gh = 3, gw = 4;
  at::Tensor full = at::randn({B, Co, gt, gh * 2, gw * 2}, f64());
  // Token (t, i, j) holds its 1x2x2 patch with features ordered (pt, ph, pw, Co).
  at::Tensor tokens = at::zeros({B, gt, gh * gw, 4 * Co}, f64());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < gt; ++t)
      for (int64_t i = 0; i < gh; ++i)
        for (int64_t j = 0; j < gw; ++j)
          for (int64_t ph = 0; ph < 2; ++ph)
            for (int64_t pw = 0; pw < 2; ++pw)
              for (int64_t c = 0; c < Co; ++c)
                tokens[b][t][i * gw + j][(ph * 2 + pw) * Co + c] = full[b][c][t][i * 2 + ph][j * 2 + pw];
  at::Tensor back = layers::unpatchify(tokens, patch, Co, gt, gh, gw, gt, gh * 2, gw * 2);
  EXPECT_EQ(max_abs_diff(back, full), 0.0);
  at::Tensor cropped = layers::unpatchify(tokens, patch, Co, gt, gh, gw, gt, 5, 7);
  EXPECT_EQ(cropped.sizes(), at::IntArrayRef({B, Co, gt, 5, 7}));
  EXPECT_EQ(max_abs_diff(cropped, full.narrow(3, 0, 5).narrow(4, 0, 7)), 0.0);
}

TEST(Layers, MathAttentionMatchesNaiveSoftmax) {
  at::manual_seed(8);
  at::Tensor q = at::randn({3, 2, 5, 8}, f64()), k = at::randn({3, 2, 5, 8}, f64()), v = at::randn({3, 2, 5, 8}, f64());
  at::Tensor ref = naive_attention(q, k, v, {});
  EXPECT_LT(max_abs_diff(layers::attention_math(q, k, v), ref), 1e-12);
  // bf16 inputs: softmax in float32, products in bf16 (the reference's temporal path).
  at::Tensor b = layers::attention_math(q.to(at::kBFloat16), k.to(at::kBFloat16), v.to(at::kBFloat16));
  EXPECT_EQ(b.scalar_type(), at::kBFloat16);
  EXPECT_LT(max_abs_diff(b, ref), 0.1);
}

TEST(Layers, PositionEmbeddingWithBf16Frequencies) {
  // dim 8: frequencies 1 and 0.01; bf16 holds 0.01 as 0.010009765625 (= 41 / 4096).
  at::Tensor e = layers::pos_embed_2d(1, 3, 8, 1.0, 2, at::kDouble, at::kCPU, at::kBFloat16);
  const double col = 2 * (2.0 / 3);  // token j = 2: 2 / scale * (base / w)
  EXPECT_NEAR(e[2][1].item<double>(), std::sin(col * 0.010009765625), 1e-15);
  EXPECT_NEAR(e[2][3].item<double>(), std::cos(col * 0.010009765625), 1e-15);
  EXPECT_NEAR(e[2][0].item<double>(), std::sin(col), 1e-15);
}
