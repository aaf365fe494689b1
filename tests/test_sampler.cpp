// Samplers against analytic velocity / noise fields with known exact solutions, the timestep
// transform against hand-computed and reference values, and CFG against hand values.
#include <gtest/gtest.h>

#include <cmath>

#include "model/error.h"
#include "model/opensora.h"
#include "model/safetensors.h"
#include "model/sampler.h"
#include "model/stdit3.h"
#include "test_util.h"

using namespace ditto;

namespace {

const at::TensorOptions kF64 = at::TensorOptions().dtype(at::kDouble);

SamplerOptions rflow(int steps, bool transform) {
  SamplerOptions o;
  o.steps = steps;
  o.timestep_transform = transform;
  return o;
}

}  // namespace

TEST(RectifiedFlow, UniformTimestepsWithoutTransform) {
  RectifiedFlow rf(rflow(5, false), {});
  EXPECT_EQ(rf.timesteps(), (std::vector<float>{1000, 800, 600, 400, 200}));
}

TEST(RectifiedFlow, TransformHandValues) {
  // 512x512, 51 frames: r = 1 * sqrt(51 // 17 * 5) = sqrt(15); t' = r t / (1 + (r - 1) t).
  VideoGeometry g{512, 512, 51, LatentSpace::OpenSoraV12};
  const double r = std::sqrt(15.0);
  EXPECT_NEAR(opensora_timestep_transform(500.0f, g, 1000), 1000 * r * 0.5 / (1 + (r - 1) * 0.5), 1e-3);
  EXPECT_NEAR(opensora_timestep_transform(1000.0f, g, 1000), 1000.0, 1e-3);
  // One frame at 512x512: r = 1, the identity.
  EXPECT_EQ(opensora_timestep_transform(333.0f, {512, 512, 1, LatentSpace::OpenSoraV12}, 1000), 333.0f);
  // 256x256 one frame: r = 0.5 -> t' = 0.5 t / (1 - 0.5 t); t = 400 -> 0.2 / 0.8 = 250.
  EXPECT_NEAR(opensora_timestep_transform(400.0f, {256, 256, 1, LatentSpace::OpenSoraV12}, 1000), 250.0, 1e-3);
  // Pixel-space models use the frame count itself: 512x512, 4 frames -> r = 2; t = 500 -> 1/1.5.
  EXPECT_NEAR(opensora_timestep_transform(500.0f, {512, 512, 4, LatentSpace::Pixel}, 1000), 1000.0 / 1.5, 1e-3);
  // Fewer than 17 frames would zero Open-Sora's time ratio: refused, not silently collapsed.
  EXPECT_THROW(RectifiedFlow(rflow(5, true), opensora_transform({512, 512, 16, LatentSpace::OpenSoraV12})), Error);
}

TEST(RectifiedFlow, FlowShiftHandValues) {
  // s = 3, t = 0.5: 1.5 / 2 = 0.75; the ends stay put; s = 1 is the identity.
  EXPECT_NEAR(RectifiedFlow::shift(500.0f, 3.0, 1000), 750.0, 1e-3);
  EXPECT_NEAR(RectifiedFlow::shift(1000.0f, 3.0, 1000), 1000.0, 1e-3);
  EXPECT_EQ(RectifiedFlow::shift(0.0f, 3.0, 1000), 0.0f);
  EXPECT_NEAR(RectifiedFlow::shift(123.0f, 1.0, 1000), 123.0, 1e-4);
  // 4 steps with s = 2 replace the transform (which this geometry would refuse: 16 Open-Sora frames):
  // t = 1, 0.75, 0.5, 0.25 -> 2t / (1 + t) = 1, 6/7, 2/3, 2/5.
  SamplerOptions o = rflow(4, true);
  o.shift = 2.0;
  RectifiedFlow rf(o, opensora_transform({512, 512, 16, LatentSpace::OpenSoraV12}));
  const std::vector<double> want = {1000.0, 6000.0 / 7, 2000.0 / 3, 400.0};
  ASSERT_EQ(rf.timesteps().size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(rf.timesteps()[i], want[i], 1e-3) << "step " << i;
  // Euler steps follow the shifted grid: z moves by v * (t_i - t_{i+1}) / T.
  at::Tensor z = at::zeros({1}, kF64), v = at::ones({1}, kF64);
  EXPECT_NEAR(rf.step(0, z, v).item<double>(), 1.0 - 6.0 / 7, 1e-6);
  EXPECT_NEAR(rf.step(3, z, v).item<double>(), 0.4, 1e-6);
  // The elementwise form (training's shifted noise levels): s = 3 maps 0.25 to 0.5 and 0.5 to 0.75.
  at::Tensor levels = shift_noise_levels(at::tensor({0.0, 0.25, 0.5, 1.0}, kF64), 3.0);
  EXPECT_TRUE(at::allclose(levels, at::tensor({0.0, 0.5, 0.75, 1.0}, kF64), 0, 1e-12)) << levels;
  EXPECT_THROW(shift_noise_levels(levels, 0.0), Error);
  SamplerOptions ddim = o;
  ddim.name = "ddim";
  EXPECT_THROW(make_sampler(ddim, {}), Error);  // the shift is rflow's
  o.shift = -1;
  EXPECT_THROW(RectifiedFlow(o, {}), Error);
  o.shift = NAN;
  EXPECT_THROW(RectifiedFlow(o, {}), Error);
}

TEST(RectifiedFlow, TimestepsEqualTheReferenceSampler) {
  // The official RFLOW sampler's float32 timesteps for 48x72, 51 frames, 5 steps.
  auto in = load_safetensors(ditto::test::fixture("sample_inputs.safetensors"));
  RectifiedFlow rf(rflow(5, true), opensora_transform({48, 72, 51, LatentSpace::OpenSoraV12}));
  at::Tensor ref = in.at("timesteps");
  ASSERT_EQ(ref.numel(), 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(rf.timesteps()[i], ref[i].item<float>()) << "step " << i;
}

TEST(RectifiedFlow, PointMassIsExactEveryStep) {
  // Data = a point x*. With z_t = (1 - s) x* + s n (s = t/T) the exact velocity is (x* - z) / s, and
  // z_s - x* = (z_1 - x*) s along the flow; Euler is exact for this field at every step.
  at::manual_seed(0);
  at::Tensor xstar = at::randn({1, 2, 3, 4, 5}, kF64), z0 = at::randn({1, 2, 3, 4, 5}, kF64);
  RectifiedFlow rf(rflow(7, true), opensora_transform({240, 426, 51, LatentSpace::OpenSoraV12}));
  ModelFn field = [&](const at::Tensor& z, const at::Tensor& t, int) {
    return (xstar - z) / (t[0].item<double>() / 1000.0);
  };
  const auto& ts = rf.timesteps();
  int checked = 0;
  at::Tensor z = sample(rf, z0, batched_guidance(field, 1.0), [&](int i, const at::Tensor& zi) {
    const double s_next = i + 1 < static_cast<int>(ts.size()) ? ts[i + 1] / 1000.0 : 0.0;
    const double s0 = ts[0] / 1000.0;
    EXPECT_LT((zi - (xstar + (z0 - xstar) * (s_next / s0))).abs().max().item<double>(), 1e-6) << "step " << i;
    ++checked;
  });
  EXPECT_EQ(checked, 7);
  EXPECT_LT((z - xstar).abs().max().item<double>(), 1e-6);
}

TEST(RectifiedFlow, GaussianDataConvergesAtFirstOrder) {
  // Data ~ N(0, sd^2): the exact velocity is z ((1 - s) sd^2 - s) / sigma_s^2 with
  // sigma_s^2 = (1 - s)^2 sd^2 + s^2, and the flow maps z_1 to z_1 * sigma_0 / sigma_1 = z_1 * sd.
  const double sd = 0.3;
  at::manual_seed(1);
  at::Tensor z1 = at::randn({1, 1, 2, 2, 2}, kF64);
  ModelFn field = [&](const at::Tensor& z, const at::Tensor& t, int) {
    const double s = t[0].item<double>() / 1000.0;
    const double var = (1 - s) * (1 - s) * sd * sd + s * s;
    return z * (((1 - s) * sd * sd - s) / var);
  };
  auto error = [&](int steps) {
    RectifiedFlow rf(rflow(steps, false), {});
    return (sample(rf, z1, batched_guidance(field, 1.0)) - z1 * sd).abs().max().item<double>();
  };
  const double e1 = error(100), e2 = error(200), e3 = error(400);
  EXPECT_LT(e3, 1e-2);
  EXPECT_NEAR(e1 / e2, 2.0, 0.3);  // halving the step halves the error: Euler's order 1
  EXPECT_NEAR(e2 / e3, 2.0, 0.3);
}

TEST(DDIM, PointMassFollowsTheClosedForm) {
  // For a point mass x* the exact noise prediction is (z - sqrt(a_t) x*) / sqrt(1 - a_t); DDIM
  // (eta = 0) then keeps z_t = sqrt(a_t) x* + sqrt(1 - a_t) eps0 and ends exactly on x*.
  at::manual_seed(2);
  at::Tensor xstar = at::randn({1, 3, 2, 2, 2}, kF64), z0 = at::randn({1, 3, 2, 2, 2}, kF64);
  SamplerOptions o;
  o.name = "ddim";
  o.steps = 10;
  DDIM ddim(o);
  EXPECT_EQ(ddim.timesteps().front(), 900.0f);
  EXPECT_EQ(ddim.timesteps().back(), 0.0f);
  const double a0 = ddim.alpha_cumprod(900);
  const at::Tensor eps0 = (z0 - std::sqrt(a0) * xstar) / std::sqrt(1 - a0);
  ModelFn eps = [&](const at::Tensor& z, const at::Tensor& t, int) {
    const double a = ddim.alpha_cumprod(static_cast<int>(t[0].item<float>()));
    return (z - std::sqrt(a) * xstar) / std::sqrt(1 - a);
  };
  at::Tensor z = sample(ddim, z0, batched_guidance(eps, 1.0), [&](int i, const at::Tensor& zi) {
    const double a = i + 1 < 10 ? ddim.alpha_cumprod(static_cast<int>(ddim.timesteps()[i + 1])) : 1.0;
    EXPECT_LT((zi - (std::sqrt(a) * xstar + std::sqrt(1 - a) * eps0)).abs().max().item<double>(), 1e-10);
  });
  EXPECT_LT((z - xstar).abs().max().item<double>(), 1e-10);
  // The linear schedule's first alpha_bar: 1 - 1e-4.
  EXPECT_DOUBLE_EQ(ddim.alpha_cumprod(0), 1 - 1e-4);
}

TEST(Guidance, CombinesTheFirstChannelsOfBothHalves) {
  // Batch [cond, uncond], 4 channels of which the first 2 are the prediction (pred_sigma).
  at::Tensor p = at::zeros({2, 4, 1, 1, 1}, kF64);
  p[0].fill_(3.0);  // cond
  p[1].fill_(1.0);  // uncond
  p[0][2].fill_(100.0);  // sigma channels are ignored
  at::Tensor g = cfg_combine(p.narrow(1, 0, 2), 7.0);
  ASSERT_EQ(g.sizes(), at::IntArrayRef({1, 2, 1, 1, 1}));
  EXPECT_DOUBLE_EQ(g.max().item<double>(), 1 + 7 * (3 - 1));
  EXPECT_DOUBLE_EQ(g.min().item<double>(), 15.0);
  // Scale 1 turns guidance off: the model sees one batch half and its prediction is used as is.
  int batch_seen = 0;
  ModelFn f = [&](const at::Tensor& z, const at::Tensor&, int) {
    batch_seen = static_cast<int>(z.size(0));
    return at::ones_like(z);
  };
  RectifiedFlow rf(rflow(1, false), {});
  at::Tensor z = sample(rf, at::zeros({1, 2, 1, 1, 1}, kF64), batched_guidance(f, 1.0));
  EXPECT_EQ(batch_seen, 1);
  EXPECT_DOUBLE_EQ(z.max().item<double>(), 1.0);  // one step of size 1000/1000
  sample(rf, at::zeros({1, 2, 1, 1, 1}, kF64), batched_guidance(f, 4.5));
  EXPECT_EQ(batch_seen, 2);
}

TEST(OpenSoraParity, RectifiedFlowSamplingWithCfgMatchesTheReference) {
  STDiT3 m = STDiT3::from_pretrained(ditto::test::fixture(""), at::TensorOptions().dtype(at::kFloat));
  auto in = load_safetensors(ditto::test::fixture("sample_inputs.safetensors"));
  auto ref = load_safetensors(ditto::test::fixture("sample_out.safetensors"));
  RectifiedFlow rf(rflow(5, true), opensora_transform({48, 72, 51, LatentSpace::OpenSoraV12}));
  ForwardArgs base;
  base.y = at::cat({in.at("y"), m.null_caption()}, 0);
  base.mask = in.at("mask");
  base.fps = at::full({1}, 24.0f);
  base.height = at::full({1}, 48.0f);
  base.width = at::full({1}, 72.0f);
  ModelFn model = [&](const at::Tensor& z, const at::Tensor& t, int) {
    ForwardArgs a = base;
    a.x = z;
    a.timestep = t;
    return m.forward(a).narrow(1, 0, 4);
  };
  at::Tensor z = sample(rf, in.at("z0"), batched_guidance(model, 7.0), [&](int i, const at::Tensor& zi) {
    EXPECT_LT(ditto::test::rel_err(zi, ref.at("z_step" + std::to_string(i))), 1e-5) << "step " << i;
  });
  EXPECT_LT(ditto::test::rel_err(z, ref.at("z")), 1e-5);
}

TEST(RectifiedFlow, Bf16SizesRoundTheRatioAsTheReferenceDoes) {
  // 720p, 51 frames: sqrt(720 * 1280 / 512^2) = 1.875 and sqrt(15) = 3.873 -> 3.875 in bf16;
  // 1.875 * 3.875 = 7.265625 rounds (to even) to 7.25 in bf16. The rest is float32.
  VideoGeometry g{720, 1280, 51, LatentSpace::OpenSoraV12, at::kBFloat16};
  const float tn = 600.0f / 1000.0f, r = 7.25f;
  EXPECT_EQ(opensora_timestep_transform(600.0f, g, 1000), r * tn / (1.0f + (r - 1.0f) * tn) * 1000.0f);
  // float32 sizes keep the exact ratio 1.875 * sqrt(15).
  g.size_dtype = at::kFloat;
  const float r32 = 1.875f * std::sqrt(15.0f);
  EXPECT_EQ(opensora_timestep_transform(600.0f, g, 1000), r32 * tn / (1.0f + (r32 - 1.0f) * tn) * 1000.0f);
}

TEST(FlowUniPC, MatchesDiffusersSchedulerStepByStep) {
  // diffusers' UniPCMultistepScheduler as Wan's pipeline configures it, driven by a fixed stand-in
  // model (tests/fixtures/make_unipc_fixture.py): the same timesteps (truncated to integers), sigmas,
  // and the sample after every step, predictor and corrector, first- and second-order.
  const auto f = load_safetensors(std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/unipc_flow.safetensors");
  SamplerOptions o;
  o.name = "unipc";
  o.steps = 7;
  o.shift = 3.0;
  auto sampler = make_sampler(o);
  auto* unipc = dynamic_cast<FlowUniPC*>(sampler.get());
  ASSERT_NE(unipc, nullptr);
  const at::Tensor ts = f.at("timesteps"), sig = f.at("sigmas");
  ASSERT_EQ(static_cast<int64_t>(sampler->timesteps().size()), ts.size(0));
  for (int i = 0; i < 7; ++i) EXPECT_EQ(sampler->timesteps()[i], ts[i].item<float>()) << i;
  for (int i = 0; i <= 7; ++i) EXPECT_FLOAT_EQ(unipc->sigmas()[i], sig[i].item<float>()) << i;
  const at::Tensor c = f.at("c");
  at::Tensor x = f.at("x0");
  sampler->reset();
  for (int i = 0; i < 7; ++i) {
    const at::Tensor v = at::tanh(x) * (sampler->timesteps()[i] / 1000.0) + c;  // the flow toward the noise
    x = sampler->step(i, x, -v);                                             // ditto's prediction is -v
    // Bit for bit until the corrector solves its 2 x 2 system (LAPACK there, closed form here): 7e-9.
    EXPECT_LT(ditto::test::rel_err(x, f.at("sample" + std::to_string(i))), 1e-7) << "step " << i + 1;
  }
  // A second video after reset() is the same video: no history carried over.
  at::Tensor y = f.at("x0");
  sampler->reset();
  for (int i = 0; i < 7; ++i) y = sampler->step(i, y, -(at::tanh(y) * (sampler->timesteps()[i] / 1000.0) + c));
  EXPECT_TRUE(at::equal(x, y));
  EXPECT_THROW(sampler->step(3, y, y), Error);  // steps run in order
}

TEST(FlowUniPC, Diffusers037GridGivesItsTimesteps) {
  // diffusers 0.37's UniPCMultistepScheduler with use_flow_sigmas, flow_shift 3, 6 steps (measured in
  // ../shared/reference/wan_and_pipelines.md section 2); the official grid gives 999, 937, 856, 749, 599, 374.
  SamplerOptions o;
  o.name = "unipc", o.steps = 6, o.shift = 3.0, o.grid = "diffusers-0.37";
  auto s = make_sampler(o);
  EXPECT_EQ(s->timesteps(), (std::vector<float>{999, 937, 857, 750, 600, 376}));
  // sigma_0 = shift(1) lowered by 1e-6 (float32), then 0 at the end.
  const auto& sigmas = dynamic_cast<FlowUniPC&>(*s).sigmas();
  EXPECT_FLOAT_EQ(sigmas.front(), static_cast<float>(1.0 - 1e-6));
  EXPECT_EQ(sigmas.back(), 0.0f);
  o.grid = "official";
  EXPECT_EQ(make_sampler(o)->timesteps(), (std::vector<float>{999, 937, 856, 749, 599, 374}));
  o.grid = "linspace";
  EXPECT_THROW(make_sampler(o), Error);
  o.name = "rflow", o.grid = "diffusers-0.37";
  EXPECT_THROW(make_sampler(o), Error);  // the grid is unipc's
}
