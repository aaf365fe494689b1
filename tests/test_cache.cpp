// Cache policies against hand-worked schedules and values, and the runner on one rank: reuse
// semantics, state reset between videos, and the `none` limit.
#include <gtest/gtest.h>

#include <cmath>

#include "cache/adacache.h"
#include "cache/cache_runner.h"
#include "cache/schedule_policies.h"
#include "cache/threshold_policies.h"
#include "dist/video_sampler.h"
#include "model/error.h"
#include "model/host_sync.h"
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
  for (const std::string name : {"none", "static", "pab", "adacache", "teacache", "fbcache"}) {
    auto policy = make_cache_policy(name, {}, policy_context(m, so.steps));
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
      {"teacache", {{"threshold", "2.5"}}}, {"fbcache", {{"threshold", "0.6"}}}};
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
    if (name == "none" || name == "static" || name == "pab") {
      EXPECT_EQ(decisions, 0) << name;
    }
    if (name == "teacache" || name == "fbcache" || options.count("per")) {
      EXPECT_EQ(decisions, so.steps) << name;
    }
  }
}
