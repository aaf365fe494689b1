// Cache policies against hand-worked schedules and values, and the runner on one rank: reuse
// semantics, state reset between videos, and the `none` limit.
#include <gtest/gtest.h>

#include <cmath>

#include "cache/adacache.h"
#include "cache/cache_runner.h"
#include "cache/output_policies.h"
#include "cache/schedule_policies.h"
#include "cache/threshold_policies.h"
#include "dist/video_sampler.h"
#include "model/error.h"
#include "model/host_sync.h"
#include "model/family.h"
#include "model/opensora.h"
#include "test_util.h"
#include "tiny_video.h"

using namespace ditto;

namespace {

std::vector<float> steps_of(int n) {
  std::vector<float> t;
  for (int i = 0; i < n; ++i) t.push_back(1000.0f * (n - i) / n);
  return t;
}

std::string modes(CachePolicy& p, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += p.plan(i).mode == StepMode::Compute ? 'c' : 'r';
  return s;
}

}  // namespace

TEST(Codebook, LookupAtAndAroundEveryThreshold) {
  const Codebook cb = adacache_preset("30-fast");  // 0.08:6 / 0.16:5 / 0.24:4 / 0.32:3 / 0.40:2 / 1.00:1
  const double eps = 1e-9;
  EXPECT_EQ(cb.lookup(0.0), 6);
  EXPECT_EQ(cb.lookup(0.08 - eps), 6);
  EXPECT_EQ(cb.lookup(0.08), 5);  // strictly below a threshold selects its rate
  EXPECT_EQ(cb.lookup(0.16 - eps), 5);
  EXPECT_EQ(cb.lookup(0.16), 4);
  EXPECT_EQ(cb.lookup(0.24), 3);
  EXPECT_EQ(cb.lookup(0.32), 2);
  EXPECT_EQ(cb.lookup(0.40 - eps), 2);
  EXPECT_EQ(cb.lookup(0.40), 1);
  EXPECT_EQ(cb.lookup(0.99), 1);
  EXPECT_EQ(cb.lookup(1.00), 1);  // the last entry is the catch-all
  EXPECT_EQ(cb.lookup(50.0), 1);
  const Codebook fast100 = adacache_preset("100-fast");
  EXPECT_EQ(fast100.lookup(0.029), 12);
  EXPECT_EQ(fast100.lookup(0.10), 4);
  EXPECT_EQ(fast100.lookup(0.2), 3);
  EXPECT_EQ(adacache_preset("30-slow").lookup(0.1), 2);
  EXPECT_EQ(Codebook::parse("0.1:4/1:2").str(), "0.1:4/1:2");
  EXPECT_THROW(Codebook::parse("0.2:3/0.1:2"), Error);
  EXPECT_THROW(Codebook::parse("0.2-3"), Error);
}

TEST(AdaCache, StateMachineFollowsAHandWrittenSchedule) {
  // 12 steps, codebook 0.1:4 / 0.2:2 / 1:1, no MoReg. Scripted metric sums per computed step
  // (|p_old - p_new|, |p_old|): relative change 0.05 -> rate 4 (after the first metric), etc.
  AdaCachePolicy p(Codebook::parse("0.1:4/0.2:2/1:1"), 3, "temporal_blocks.0.attn", {}, "test");
  p.reset(steps_of(12));
  // Hand schedule (1-based): 1 computes (no metric yet, rate 1) -> 2 computes (d = 0.05 / 1 -> rate 4)
  // -> 6 computes (d = 0.6 / 4 = 0.15 -> rate 2) -> 8 computes (d = 0.5 / 2 = 0.25 -> rate 1)
  // -> 9 computes (d = 0.01 -> rate 4) -> 11, 12 are forced (N-1, N).
  const std::map<int, double> rel = {{2, 0.05}, {6, 0.6}, {8, 0.5}, {9, 0.01}, {11, 0.3}, {12, 0.3}};
  std::string got;
  for (int step = 0; step < 12; ++step) {
    const int s = step + 1;
    const bool compute = p.plan(step).mode == StepMode::Compute;
    got += compute ? 'c' : 'r';
    if (!compute) continue;
    std::vector<double> sums(6, 0.0);
    if (s > 1) sums = {rel.at(s) * 10, 10, 0, 0, 0, 1};
    p.apply(p.decide(sums, step), step);
  }
  EXPECT_EQ(got, "ccrrrcrccrcc");
  // Reset forgets the rate and the last compute.
  p.reset(steps_of(12));
  EXPECT_EQ(p.rate(), 1);
  EXPECT_EQ(modes(p, 3), "ccr");
}

TEST(AdaCache, MoRegHandValues) {
  MoRegParams m;
  m.enabled = true;
  // m = 0.385 exactly -> (m / 0.385)^8 = 1; m = 0.35 -> (0.35/0.385)^8
  EXPECT_DOUBLE_EQ(moreg_score(0.77, 1.0, 1.0, m), 1.0);
  EXPECT_NEAR(moreg_score(0.7, 1.0, 1.0, m), std::pow(0.35 / 0.385, 8), 1e-15);
  // Inside the window: d = rel / k * (m + |10 (m - m_prev) / k|), m_prev starting at 1.
  m.first = 1;
  m.last = 10;
  AdaCachePolicy p(Codebook::parse("0.1:4/1:1"), 3, "temporal_blocks.0.attn", m, "test");
  p.reset(steps_of(10));
  p.apply(p.decide({0, 0, 0.7, 1.0, 1.0, 0}, 0), 0);  // step 1: no metric yet
  const double score = std::pow(0.35 / 0.385, 8);
  auto d = p.decide({0.2, 10, 0.7, 1.0, 1.0, 1}, 1);  // step 2, k = 1, m_prev = 1 (step 1 kept the initial 1)
  const double expected = 0.02 * (score + 10 * std::abs(score - 1.0));
  EXPECT_NEAR(unpack_double(d[3]), expected, 1e-12);
  EXPECT_EQ(d[0], expected < 0.1 ? 4 : 1);
  EXPECT_NEAR(unpack_double(d[2]), score, 1e-15);  // becomes m_prev
}

TEST(StaticPolicy, IntervalInsideTheWindow) {
  StaticPolicy p(3, 2, 8);
  p.reset(steps_of(10));
  // 1 computes; inside (2, 8]: steps 2+3k compute; 9 and 10 outside the window compute.
  EXPECT_EQ(modes(p, 10), "ccrrcrrccc");
}

TEST(PabPolicy, RangesPerAttentionKindInsideTheTimestepWindow) {
  const std::vector<UnitInfo> units = stdit3_units(/*depth=*/2);
  PabPolicy p(units, {{UnitRole::SpatialAttention, 2}, {UnitRole::TemporalAttention, 3}, {UnitRole::CrossAttention, 4}},
              300, 900);
  std::vector<float> ts = {950, 850, 800, 700, 600, 500, 400, 250};
  p.reset(ts);
  auto computes = [&](int step, const std::string& unit) { return p.plan(step).compute[unit_named(units, unit)] != 0; };
  for (int step = 0; step < 8; ++step) {
    const bool inside = ts[step] > 300 && ts[step] < 900;
    EXPECT_EQ(computes(step, "spatial_blocks.1.attn"), !inside || step % 2 == 0) << step;
    EXPECT_EQ(computes(step, "temporal_blocks.1.attn"), !inside || step % 3 == 0) << step;
    EXPECT_EQ(computes(step, "temporal_blocks.1.cross_attn"), !inside || step % 4 == 0) << step;
    EXPECT_TRUE(computes(step, "spatial_blocks.1.mlp")) << step;
  }
}

TEST(TeaCache, AccumulatesTheRescaledChange) {
  TeaCachePolicy p(0.5, {1.0, 0.0});  // rescale(x) = x
  p.reset(steps_of(6));
  EXPECT_DOUBLE_EQ(p.rescale(0.3), 0.3);
  std::string got;
  const double rel[] = {0, 0.2, 0.2, 0.2, 0.1, 0.9};
  for (int step = 0; step < 6; ++step) {
    p.apply(p.decide({rel[step], step ? 1.0 : 0.0}, step), step);
    got += p.probe_says_compute() ? 'c' : 'r';
  }
  // acc: 0.2 r, 0.4 r, 0.6 c (reset), 0.1 r, last step forced c.
  EXPECT_EQ(got, "crrcrc");
  TeaCachePolicy os(0.1, {2.17546007e+02, -1.18329252e+02, 2.68662585e+01, -4.59364272e-02, 4.84426240e-02});
  EXPECT_NEAR(os.rescale(0.1), 2.17546007e-02 - 1.18329252e-01 + 2.68662585e-01 - 4.59364272e-03 + 4.84426240e-02,
              1e-12);
}

TEST(FirstBlockCache, ComparesWithTheLastComputedStep) {
  FirstBlockCachePolicy p(0.1);
  p.reset(steps_of(5));
  at::Tensor r0 = at::ones({1, 2, 2, 4}, at::kDouble);
  std::string got;
  const double scale[] = {1.0, 1.05, 1.08, 1.12, 1.0};  // relative to the reference (last computed)
  for (int step = 0; step < 5; ++step) {
    auto sums = p.local_sums(r0 * scale[step], step);
    p.apply(p.decide(sums, step), step);
    got += p.probe_says_compute() ? 'c' : 'r';
  }
  // 1.05 and 1.08 stay within 10 % of the step-1 reference; 1.12 does not; the last step is forced.
  EXPECT_EQ(got, "crrcc");
}

TEST(CacheRunner, NoneIsTheUncachedModelAndStateResetsBetweenVideos) {
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 3, at::TensorOptions().dtype(at::kFloat));
  const VideoRequest req = ditto::test::tiny_video_request(4, 48, 72);
  SamplerOptions so;
  so.steps = 12;
  RectifiedFlow rf(so, opensora_transform({48, 72, 51, LatentSpace::OpenSoraV12}));
  const at::Tensor reference = sample_video(m, rf, req, {});
  for (const std::string name : {"none", "static", "pab", "adacache", "teacache", "fbcache", "magcache"}) {
    const PolicyOptions options = name == "magcache" ? PolicyOptions{{"ratios", "wan2.1-t2v-1.3b"}} : PolicyOptions{};
    auto policy = make_cache_policy(name, options, policy_context(m, so.steps));
    CacheRunner runner(m, *policy, nullptr);
    auto run = [&] {
      runner.begin_video(rf.timesteps());
      at::Tensor z = sample_video(m, rf, req, {}, nullptr, runner.token_forward());
      return std::make_pair(z, runner.report());
    };
    auto [z1, r1] = run();
    auto [z2, r2] = run();  // a second video with the same runner: identical, no stale state
    EXPECT_TRUE(at::equal(z1, z2)) << name;
    EXPECT_EQ(r1["decisions"], r2["decisions"]) << name;
    EXPECT_EQ(r1["units_total"], so.steps * m.unit_count()) << name;
    if (name == "none") {
      EXPECT_LT(ditto::test::rel_err(z1, reference), 1e-6);
      EXPECT_EQ(r1["units_computed"], r1["units_total"]);
      EXPECT_EQ(r1["flops_saved"], 0.0);
    }
  }
}

TEST(CacheRunner, ReusedStackAddsTheLastResidual) {
  // static with interval 2: step 2 reuses step 1's stack residual, so its block-stack output is
  // x_in(step 2) + (x_out - x_in)(step 1), checked against the model's own pieces.
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 5, at::TensorOptions().dtype(at::kDouble));
  StaticPolicy policy(2, 1, 0);
  CacheRunner runner(m, policy, nullptr);
  runner.begin_video(steps_of(6));
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(6);
  ForwardArgs a;
  a.x = at::randn({1, 4, 3, 4, 4}, gen, at::kDouble);
  a.y = at::randn({1, 1, 8, 32}, gen, at::kDouble);
  a.fps = at::full({1}, 24.0);
  a.height = a.width = at::full({1}, 32.0);
  auto cond_at = [&](float t) {
    a.timestep = at::full({1}, t, at::kDouble);
    return m.condition(a);
  };
  at::Tensor tok1 = at::randn({1, 3, 4, 16}, gen, at::kDouble), tok2 = at::randn({1, 3, 4, 16}, gen, at::kDouble);
  const Conditioning c1 = cond_at(900), c2 = cond_at(800);
  runner.forward(tok1, 0, c1, nullptr, 0);
  EXPECT_EQ(runner.last_step_units(), m.unit_count());
  at::Tensor out2 = runner.forward(tok2, 0, c2, nullptr, 1);
  EXPECT_EQ(runner.last_step_units(), 0);
  at::Tensor x1 = m.embed_tokens(tok1, 0, c1), y1 = x1;
  for (int i = 0; i < c.depth; ++i)
    for (BlockKind k : {BlockKind::Spatial, BlockKind::Temporal}) y1 = m.block(k, i, y1, c1);
  at::Tensor expected = m.final_tokens(m.embed_tokens(tok2, 0, c2) + (y1 - x1), c2);
  EXPECT_LT(ditto::test::rel_err(out2, expected), 1e-12);
}

TEST(CachePolicies, UnknownNamesAndOptionsAreErrors) {
  EXPECT_THROW(make_cache_policy("magic", {}, ditto::test::stdit3_policy_context(2, 30)), Error);
  EXPECT_THROW(make_cache_policy("pab", {{"spatail", "2"}}, ditto::test::stdit3_policy_context(2, 30)), Error);
  EXPECT_THROW(make_cache_policy("adacache", {{"preset", "medium"}}, ditto::test::stdit3_policy_context(2, 30)), Error);
  EXPECT_THROW(make_cache_policy("teacache", {{"threshold", "abc"}}, ditto::test::stdit3_policy_context(2, 30)), Error);
  EXPECT_THROW(parse_policy_options({"noequals"}), Error);
  auto p = make_cache_policy("adacache", {{"preset", "slow"}, {"moreg", "1"}}, ditto::test::stdit3_policy_context(28, 30));
  EXPECT_EQ(p->params()["codebook"], "0.08:3/0.16:2/0.24:1/0.32:1/0.4:1/1:1");
  EXPECT_EQ(p->params()["metric_unit"], "temporal_blocks.13.attn");  // the released cache_loc
  EXPECT_EQ(p->params()["moreg_window"], nlohmann::json({4, 26}));
  const std::string file = ditto::test::temp_dir() + "/codebook.txt";
  ditto::test::write_bytes(file, "0.05:5/0.5:2/1:1\n");
  EXPECT_EQ(make_cache_policy("adacache", {{"codebook", "@" + file}}, ditto::test::stdit3_policy_context(28, 30))->params()["codebook"], "0.05:5/0.5:2/1:1");
  EXPECT_THROW(make_cache_policy("adacache", {{"codebook", "@/nonexistent"}}, ditto::test::stdit3_policy_context(28, 30)), Error);
}

TEST(CacheRunner, AStepReadsTheDeviceOncePerDecisionAndNeverOtherwise) {
  // Per sampling step the host reads device memory only for a cache decision (one read each), so on
  // a GPU a step never waits for the device otherwise. Every read on the sampling path goes through
  // read_to_host(), which counts it.
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 3, at::TensorOptions().dtype(at::kFloat));
  const VideoRequest req = ditto::test::tiny_video_request(4, 48, 72);
  SamplerOptions so;
  so.steps = 10;
  RectifiedFlow rf(so, opensora_transform({48, 72, 51, LatentSpace::OpenSoraV12}));
  const std::vector<std::pair<std::string, PolicyOptions>> policies = {
      {"none", {}}, {"static", {}}, {"pab", {{"window", "0:1001"}}},
      {"adacache", {{"codebook", "0.5:3/1.5:2/100:1"}}}, {"adacache", {{"per", "unit"}}},
      {"teacache", {{"threshold", "2.5"}}}, {"fbcache", {{"threshold", "0.6"}}},
      {"magcache", {{"ratios", "wan2.1-t2v-1.3b"}}}};
  int64_t video_setup = -1;
  for (const auto& [name, options] : policies) {
    auto policy = make_cache_policy(name, options, policy_context(m, so.steps));
    CacheRunner runner(m, *policy, nullptr);
    runner.begin_video(rf.timesteps());
    std::vector<int64_t> reads;
    int64_t last = host_reads();
    sample_video(m, rf, req, {}, [&](int, const at::Tensor&) {
      reads.push_back(host_reads() - last);
      last = host_reads();
    }, runner.token_forward());
    const auto log = runner.report()["decisions"];
    int decisions = 0;
    for (int i = 0; i < so.steps; ++i) {
      const int decided = log[i].contains("decision") ? 1 : 0;
      decisions += decided;
      if (i > 0) {
        EXPECT_EQ(reads[i], decided) << name << " step " << i + 1;
      }
    }
    // The first step also prepares the video (the caption mask and the sizes: one read each).
    const int64_t setup = reads[0] - (log[0].contains("decision") ? 1 : 0);
    if (video_setup < 0) video_setup = setup;
    EXPECT_EQ(setup, video_setup) << name;
    EXPECT_EQ(setup, 2) << name;
    if (name == "none" || name == "static" || name == "pab" || name == "magcache") {
      EXPECT_EQ(decisions, 0) << name;
    }
    if (name == "teacache" || name == "fbcache" || options.count("per")) {
      EXPECT_EQ(decisions, so.steps) << name;
    }
  }
}

namespace {

// MagCache4Wan2.1's magcache_forward for one parity, written out: calls cnt = 0 .. 2N-1 read
// mag_ratios[cnt] (cond/uncond interleaved); the conditional calls (even cnt) decide its steps.
std::string magcache_reference(const std::vector<double>& interleaved, int steps, double E, int K, double R) {
  // nearest_interp of each parity to `steps` values (round half to even, as numpy).
  std::vector<double> parity[2];
  for (size_t i = 0; i < interleaved.size(); ++i) parity[i % 2].push_back(interleaved[i]);
  std::vector<double> ratios;
  for (int i = 0; i < steps; ++i)
    for (int p = 0; p < 2; ++p) {
      const int src = static_cast<int>(parity[p].size());
      const double scale = steps == src ? 1.0 : static_cast<double>(src - 1) / (steps - 1);
      ratios.push_back(parity[p][static_cast<size_t>(std::nearbyint(i * scale))]);
    }
  double acc_ratio[2] = {1, 1}, acc_err[2] = {0, 0};
  int acc_steps[2] = {0, 0};
  std::string out;
  for (int cnt = 0; cnt < 2 * steps; ++cnt) {
    const int p = cnt % 2;
    bool skip = false;
    if (cnt >= static_cast<int>(2 * steps * R)) {
      acc_ratio[p] *= ratios[cnt];
      acc_steps[p] += 1;
      acc_err[p] += std::fabs(1 - acc_ratio[p]);
      if (acc_err[p] < E && acc_steps[p] <= K) skip = true;
      else acc_err[p] = 0, acc_steps[p] = 0, acc_ratio[p] = 1;
    }
    if (p == 0) out += skip ? 'r' : 'c';
  }
  return out;
}

std::vector<double> interleaved_of(const MagnitudeRatios& r) {
  std::vector<double> v;
  for (size_t i = 0; i < r.cond.size(); ++i) v.push_back(r.cond[i]), v.push_back(r.uncond[i]);
  return v;
}

}  // namespace

TEST(MagCache, PlansAsTheReferenceOnThePublishedTablesAndResampledToOtherStepCounts) {
  for (const std::string table : {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b"}) {
    const MagnitudeRatios r = MagnitudeRatios::published(table);
    ASSERT_EQ(r.cond.size(), 50u);
    EXPECT_EQ(r.cond[0], 1.0);
    for (const auto& [steps, E, K] : std::vector<std::tuple<int, double, int>>{{50, 0.12, 4}, {50, 0.24, 6}, {30, 0.12, 2}, {20, 0.06, 2}}) {
      MagCachePolicy p(r, E, K, 0.2);
      p.reset(steps_of(steps));
      const std::string got = modes(p, steps), want = magcache_reference(interleaved_of(r), steps, E, K, 0.2);
      EXPECT_EQ(got, want) << table << " " << steps << " steps";
      EXPECT_EQ(got.substr(0, steps / 5), std::string(steps / 5, 'c'));  // the first 20% compute
      EXPECT_NE(got.find('r'), std::string::npos) << table << " " << steps;
    }
  }
  // 1.3B at E 0.12, K 4 (its README's setting) over 50 steps, worked by hand from the table.
  MagCachePolicy p(MagnitudeRatios::published("wan2.1-t2v-1.3b"), 0.12, 4, 0.2);
  p.reset(steps_of(50));
  EXPECT_EQ(modes(p, 15), "ccccccccccrrrrc");  // 4 reused (K), then computed
}

TEST(MagCache, ProfilerRatiosAreTheStackResidualsPerTokenNormRatios) {
  // Two units per step, a batch of [cond; uncond], three steps: the ratio at step t is the mean over
  // tokens of ||r1_t + r2_t|| / ||r1_{t-1} + r2_{t-1}||, per branch (checked in float64 by loops).
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(21);
  const int steps = 3;
  std::vector<std::vector<at::Tensor>> r(steps);
  MagnitudeProfiler prof(2, steps, 0, at::TensorOptions());
  for (int t = 0; t < steps; ++t)
    for (int u = 0; u < 2; ++u) {
      r[t].push_back(at::randn({2, 2, 3, 5}, gen, at::kFloat));
      prof.observe(u, t, r[t][u]);
    }
  for (int b = 0; b < 2; ++b)
    for (int t = 1; t < steps; ++t) {
      double sum = 0;
      for (int f = 0; f < 2; ++f)
        for (int n = 0; n < 3; ++n) {
          double now = 0, before = 0;
          for (int c = 0; c < 5; ++c) {
            const double a = r[t][0][b][f][n][c].item<double>() + r[t][1][b][f][n][c].item<double>();
            const double z = r[t - 1][0][b][f][n][c].item<double>() + r[t - 1][1][b][f][n][c].item<double>();
            now += a * a, before += z * z;
          }
          sum += std::sqrt(now) / std::sqrt(before);
        }
      EXPECT_NEAR(prof.sums()[b][t].item<double>(), sum, 1e-6 * sum) << b << " " << t;
      EXPECT_EQ(prof.counts()[b][t].item<double>(), 6.0);
    }
  EXPECT_EQ(prof.counts()[0][0].item<double>(), 0.0);  // step 0 has no previous step
  // A batch of one is the given branch (a CFG-parallel rank's).
  MagnitudeProfiler single(1, 2, 1, at::TensorOptions());
  for (int t = 0; t < 2; ++t) single.observe(0, t, at::randn({1, 2, 3, 5}, gen, at::kFloat));
  EXPECT_EQ(single.counts()[1][1].item<double>(), 6.0);
  EXPECT_EQ(single.counts()[0][1].item<double>(), 0.0);
}

TEST(EasyCache, DecidesAsTheReferenceFromInputsAndOutputs) {
  // The policy driven with synthetic inputs and a stand-in model against EasyCache4Wan2.1's
  // conditional path written out with means over whole tensors.
  const int steps = 16, warmup = 3;
  const double threshold = 0.3;
  EasyCachePolicy p(threshold, warmup);
  p.reset(steps_of(steps));
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(31);
  const at::Tensor x0 = at::randn({2, 3, 4, 8}, gen, at::kFloat), drift = at::randn({2, 3, 4, 8}, gen, at::kFloat);
  auto model = [&](const at::Tensor& in, int s) { return at::tanh(in) * 0.7 + 0.05 * s; };
  // Reference state.
  at::Tensor prev_in, prev_out, prev_prev_in;
  double k = NAN, acc = 0;
  std::string want, got;
  auto mean = [](const at::Tensor& t) { return t.abs().to(at::kDouble).mean().item<double>(); };
  for (int s = 0; s < steps; ++s) {
    const at::Tensor in = x0 + drift * (0.02 * s * s);
    // reference decision
    bool calc = true;
    if (s < warmup || s >= steps - 1) {
      acc = 0;
    } else if (prev_in.defined() && prev_out.defined() && !std::isnan(k)) {
      acc += k * (mean(in - prev_in) / mean(prev_out));
      if (acc < threshold) calc = false;
      else acc = 0;
    }
    prev_in = in;
    want += calc ? 'c' : 'r';
    // the policy's
    p.apply(p.decide(p.local_sums(in, s), s), s);
    got += p.probe_says_compute() ? 'c' : 'r';
    if (calc) {
      const at::Tensor out = model(in, s);
      if (prev_out.defined() && prev_prev_in.defined()) k = mean(out - prev_out) / mean(in - prev_prev_in);
      prev_prev_in = in;
      prev_out = out;
    }
    if (p.probe_says_compute()) p.observe_output(in, model(in, s), s);
  }
  EXPECT_EQ(got, want);
  EXPECT_NE(want.find('r'), std::string::npos) << want;  // the case reuses steps
  EXPECT_EQ(want.substr(0, warmup), std::string(warmup, 'c'));
  EXPECT_EQ(want.back(), 'c');
}

TEST(EasyCache, AReusedStepReturnsItsInputPlusTheLastComputedChange) {
  // Through the runner on a tiny Wan: every reused step's output is exactly its input plus the last
  // computed step's output minus input; a learned-sigma model (output wider than input) is refused.
  const auto m = random_dit("wan-tiny", 3, at::TensorOptions().dtype(at::kDouble));
  VideoRequest req = ditto::test::tiny_wan_request(5, 3, 4, 6, at::kDouble);
  req.cfg_scale = 1.0;
  SamplerOptions so;
  so.name = "unipc", so.steps = 12, so.shift = 3.0;
  auto sampler = make_sampler(so);
  auto policy = make_cache_policy("easycache", {{"threshold", "1.5"}, {"warmup", "2"}}, policy_context(*m, so.steps));
  CacheRunner runner(*m, *policy, nullptr);
  runner.begin_video(sampler->timesteps());
  at::Tensor last_in, last_out;
  int reused = 0;
  TokenForward fwd = [&](const at::Tensor& t, int64_t b, const DiTContext& c, AttentionSeam* s, int step) {
    const at::Tensor out = runner.forward(t, b, c, s, step);
    if (runner.last_step_units() == 0) {
      ++reused;
      EXPECT_TRUE(at::equal(out, t + (last_out - last_in))) << "step " << step + 1;
    } else {
      last_in = t, last_out = out;
    }
    return out;
  };
  sample_video(*m, *sampler, req, {}, nullptr, fwd);
  EXPECT_GT(reused, 0);
  EXPECT_EQ(runner.report()["units_computed"].get<int>(), (so.steps - reused) * m->unit_count());

  const STDiT3Config c = builtin_config("stdit3-tiny");  // learned sigma: 8 output channels for 4
  STDiT3 s3 = STDiT3::random(c, 3, at::TensorOptions().dtype(at::kFloat));
  auto ec = make_cache_policy("easycache", {}, policy_context(s3, 4));
  CacheRunner r3(s3, *ec, nullptr);
  SamplerOptions o4;
  o4.steps = 4;
  RectifiedFlow rf(o4, nullptr);
  r3.begin_video(rf.timesteps());
  try {
    sample_video(s3, rf, ditto::test::tiny_video_request(4, 48, 72), {}, nullptr, r3.token_forward());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("learned-sigma"), std::string::npos) << e.what();
  }
  // MagCache needs ratios: STDiT3 has no published table.
  EXPECT_THROW(make_cache_policy("magcache", {}, policy_context(s3, 4)), Error);
}

TEST(CachePolicies, AFileThatIsNotACodebookIsNamedNotEchoed) {
  // codebook=@FILE reads a file a job line names: a file that is not a codebook is an Error naming it,
  // without a word of what it holds.
  const std::string path = ditto::test::temp_dir() + "/secret.txt";
  ditto::test::write_bytes(path, "SECRET-TOKEN=abc123\nline two\n");
  try {
    make_cache_policy("adacache", {{"codebook", "@" + path}}, ditto::test::stdit3_policy_context(2, 30));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_EQ(m.find("SECRET"), std::string::npos) << m;
    EXPECT_EQ(m.find("abc123"), std::string::npos) << m;
  }
}
