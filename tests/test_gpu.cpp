// GPU checks (label gpu): the same model on CUDA against the CPU float32 result, CUDA graphs against
// eager steps. Skips cleanly when no GPU is visible.
#include <gtest/gtest.h>

#include "cache/cache_runner.h"
#include "dist/video_sampler.h"
#include "model/cuda_graph.h"
#include "model/family.h"
#include "model/layers.h"
#include "model/sampler.h"
#include "model/stdit3.h"
#include "test_util.h"
#include "tiny_video.h"

using namespace ditto;

namespace {

ForwardArgs inputs(const STDiT3Config& c, const at::Device& dev) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  auto f = at::TensorOptions().dtype(at::kFloat);
  ForwardArgs a;
  a.x = at::randn({2, c.in_channels, 5, 16, 18}, g, f).to(dev);
  a.timestep = at::tensor({900.0f, 250.0f}).to(dev);
  a.y = at::randn({2, 1, c.model_max_length, c.caption_channels}, g, f).to(dev);
  a.mask = at::tensor({1, 1, 1, 1, 1, 0, 0, 0}, at::kLong).reshape({1, 8}).to(dev);
  a.fps = at::full({1}, 24.0f).to(dev);
  a.height = at::full({1}, 128.0f).to(dev);
  a.width = at::full({1}, 144.0f).to(dev);
  return a;
}

}  // namespace

TEST(Gpu, CudaForwardMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible";
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 cpu = STDiT3::random(c, 1, at::TensorOptions().dtype(at::kFloat));
  at::Tensor ref = cpu.forward(inputs(c, at::kCPU));
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    std::map<std::string, at::Tensor> w;
    for (const auto& [k, v] : cpu.weights()) w[k] = v.to(at::kCUDA).to(dtype);
    STDiT3 gpu(c, w);
    at::Tensor out = gpu.forward(inputs(c, at::Device(at::kCUDA))).cpu();
    const double tol = dtype == at::kFloat ? 1e-4 : 5e-2;
    EXPECT_LT(ditto::test::rel_err(out, ref), tol) << c10::toString(dtype);
  }
}

// A forward that trains (ditto train on a GPU): the modulated LayerNorm takes LibTorch's ops, which
// autograd records; the gradients of x, shift and scale are the CPU's.
TEST(Gpu, ModulatedLayerNormGradientsOnTheGpuAreTheCpus) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible";
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(12);
  const at::Tensor x = at::randn({2, 9, 64}, g, at::kFloat), table = at::randn({2, 6, 64}, g, at::kFloat) * 0.3;
  const at::Tensor weight = at::randn({2, 9, 64}, g, at::kFloat);
  std::vector<at::Tensor> grads[2];
  for (int on_gpu : {0, 1}) {
    const at::Device dev = on_gpu ? at::Device(at::kCUDA) : at::Device(at::kCPU);
    at::Tensor xs = x.to(dev).requires_grad_(), ts = table.to(dev).requires_grad_();
    const at::Tensor out = layers::modulated_layer_norm(xs, ts.select(1, 0).unsqueeze(1), ts.select(1, 1).unsqueeze(1),
                                                        1e-6, at::kFloat);
    (out * weight.to(dev)).sum().backward();
    grads[on_gpu] = {xs.grad().cpu(), ts.grad().cpu()};
  }
  EXPECT_LT(ditto::test::rel_err(grads[1][0], grads[0][0]), 1e-5);
  EXPECT_LT(ditto::test::rel_err(grads[1][1], grads[0][1]), 1e-5);
  EXPECT_GT(grads[1][1].abs().sum().item<double>(), 0.0) << "no gradient reached the modulation";
}

// --cuda-graphs: a video's steps replayed from one graph per expert give the eager steps' latent
// (the same kernels on the same inputs) for both families and a model of two experts, in float32 and
// bfloat16, through the plain sampler and the cache runner (policy none: one capture per expert, the
// other steps replays); a policy that skips units runs eagerly and says so.
TEST(Gpu, CudaGraphStepsMatchEagerSteps) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible";
  for (const std::string name : {"wan-tiny", "stdit3-tiny", "wan2.2-tiny"}) {
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      const auto m = random_dit(name, 3, at::TensorOptions().dtype(dtype).device(at::kCUDA));
      const bool wan = m->family() == "wan";
      VideoRequest req = wan ? ditto::test::tiny_wan_request(2) : ditto::test::tiny_video_request(2, 32, 48);
      req.cfg_scale = 5.0;
      if (wan) add_benchmark_unconditional(req, *m);
      SamplerOptions so;
      so.name = "unipc", so.steps = 6, so.shift = 3.0;
      auto sampler = make_sampler(so);
      req.experts = experts_per_step(m->outline(), sampler->timesteps(), NAN);
      const int experts = m->outline().experts;
      set_cuda_graphs(false);
      const at::Tensor eager = sample_video(*m, *sampler, req, {}).cpu();
      set_cuda_graphs(true);
      const at::Tensor graphed = sample_video(*m, *sampler, req, {}).cpu();
      auto none = make_cache_policy("none", {}, policy_context(*m, so.steps));
      CacheRunner runner(*m, *none, nullptr);
      runner.begin_video(sampler->timesteps(), req.experts);
      const at::Tensor cached = sample_video(*m, *sampler, req, {}, nullptr, runner.token_forward()).cpu();
      const nlohmann::json report = runner.report();
      auto skipping = make_cache_policy("static", {{"interval", "2"}}, policy_context(*m, so.steps));
      CacheRunner eager_runner(*m, *skipping, nullptr);
      eager_runner.begin_video(sampler->timesteps(), req.experts);
      sample_video(*m, *sampler, req, {}, nullptr, eager_runner.token_forward());
      set_cuda_graphs(false);
      const std::string what = name + " " + c10::toString(dtype);
      const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
      EXPECT_LT(ditto::test::rel_err(graphed, eager), tol) << what;
      EXPECT_LT(ditto::test::rel_err(cached, eager), tol) << what;
      EXPECT_EQ(report["cuda_graphs"]["captures"], experts) << what << report["cuda_graphs"];
      EXPECT_EQ(report["cuda_graphs"]["replays"], so.steps - experts) << what << report["cuda_graphs"];
      EXPECT_EQ(report["units_computed"], so.steps * m->unit_count()) << what;
      EXPECT_EQ(eager_runner.report()["cuda_graphs"], "off: cache policy 'static' skips units: its steps run eagerly");
    }
  }
}

// The fused modulated-LayerNorm kernel (model/fused_kernels.cu) against its float64 definition:
// rows not a multiple of anything, widths below, at and above the block's 256 threads, shift / scale
// as the strided slices of a [B, 6, C] adaLN table (as Wan's), one and two samples, every output type
// from float32, and 16-bit throughout on 4-D activations (as STDiT3's).
TEST(Gpu, FusedModulatedLayerNormMatchesFloat64) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible";
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(8);
  for (int64_t B : {1, 2}) {
    for (int64_t C : {48, 256, 1536, 5120}) {
      const at::Tensor x64 = at::randn({B, 37, C}, g, at::kDouble) * 4 + 2;
      const at::Tensor table64 = at::randn({B, 6, C}, g, at::kDouble) * 0.5;
      const at::Tensor shift64 = table64.select(1, 3).unsqueeze(1), scale64 = table64.select(1, 4).unsqueeze(1);
      const at::Tensor mean = x64.mean(-1, true), var = (x64 - mean).pow(2).mean(-1, true);
      const at::Tensor want = (x64 - mean) / at::sqrt(var + 1e-6) * (1 + scale64) + shift64;
      const at::Tensor x = x64.to(at::kFloat).cuda(), table = table64.to(at::kFloat).cuda();
      const at::Tensor shift = table.select(1, 3).unsqueeze(1), scale = table.select(1, 4).unsqueeze(1);
      for (auto out : {at::kFloat, at::kBFloat16, at::kHalf}) {
        const at::Tensor got = layers::modulated_layer_norm(x, shift, scale, 1e-6, out);
        ASSERT_EQ(got.scalar_type(), out);
        const double tol = out == at::kFloat ? 2e-6 : out == at::kHalf ? 1e-3 : 8e-3;
        EXPECT_LT(ditto::test::rel_err(got.cpu().to(at::kDouble), want), tol) << "B " << B << " C " << C << " " << out;
      }
      // 16-bit throughout, as STDiT3 runs it: x [B, T, S, C] with [B, 1, 1, C] slices of a [B, 6, 1, 1, C]
      // table; against float64 on the 16-bit inputs (the kernel rounds once, at the end).
      for (auto t : {at::kBFloat16, at::kHalf}) {
        const at::Tensor x16 = x.to(t).view({B, 37, 1, C}).expand({B, 37, 2, C}).contiguous();
        const at::Tensor table16 = table.to(t).view({B, 6, 1, 1, C});
        const at::Tensor sh16 = table16.select(1, 3), sc16 = table16.select(1, 4);
        const at::Tensor xd = x16.cpu().to(at::kDouble), m = xd.mean(-1, true), vr = (xd - m).pow(2).mean(-1, true);
        const at::Tensor want16 = (xd - m) / at::sqrt(vr + 1e-6) * (1 + sc16.cpu().to(at::kDouble)) + sh16.cpu().to(at::kDouble);
        const at::Tensor got = layers::modulated_layer_norm(x16, sh16, sc16, 1e-6, t);
        ASSERT_EQ(got.scalar_type(), t);
        EXPECT_LT(ditto::test::rel_err(got.cpu().to(at::kDouble), want16), t == at::kHalf ? 1e-3 : 8e-3)
            << "B " << B << " C " << C << " " << t;
      }
    }
  }
}
