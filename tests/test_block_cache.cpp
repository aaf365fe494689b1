// Block Caching: L1rel on crafted tensors, schedules derived by hand, schedule files round-trip and
// refuse what does not fit, the policy follows its schedule, and `ditto profile` -> `--cache
// blockcache --schedule` end to end (profile curves equal under sequence parallelism).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>

#include "cache/block_schedule.h"
#include "model/error.h"
#include "model/safetensors.h"
#include "test_util.h"
#include "tiny_video.h"

using namespace ditto;
using ditto::test::read_bytes;
using ditto::test::run_ditto;
using ditto::test::run_ditto_mpi;
using ditto::test::temp_dir;

TEST(BlockCache, L1RelOnCraftedTensors) {
  const at::Tensor cur = at::tensor({1.0, 2.0, -3.0}), prev = at::tensor({1.0, 1.0, -1.0});
  EXPECT_DOUBLE_EQ(l1_rel(cur, prev), (0 + 1 + 2) / 6.0);
  EXPECT_DOUBLE_EQ(l1_rel(cur, cur), 0.0);
  EXPECT_DOUBLE_EQ(l1_rel(cur, at::zeros_like(cur)), 1.0);
  EXPECT_DOUBLE_EQ(l1_rel(at::zeros({3}), at::zeros({3})), 0.0);
  EXPECT_DOUBLE_EQ(l1_rel(cur.to(at::kFloat).reshape({1, 3}), (cur * 0.5).to(at::kFloat).reshape({1, 3})), 0.5);
  EXPECT_THROW(l1_rel(cur, at::zeros({2})), Error);
}

TEST(BlockCache, SchedulesDerivedByHand) {
  using V = std::vector<uint8_t>;
  const std::vector<double> flat = {0, 0.1, 0.1, 0.1, 0.1, 0.1};
  // Accumulated 0.1, 0.2 stay under 0.25; 0.3 would exceed it: recompute at step 4; the last step always.
  EXPECT_EQ(derive_unit_schedule(flat, 0.25), (V{1, 0, 0, 1, 0, 1}));
  EXPECT_EQ(derive_unit_schedule(flat, 0.2), (V{1, 0, 0, 1, 0, 1}));  // equal to delta is still reused
  EXPECT_EQ(derive_unit_schedule(flat, 0.05), (V{1, 1, 1, 1, 1, 1}));  // delta below the smallest change
  EXPECT_EQ(derive_unit_schedule(flat, 10.0), (V{1, 0, 0, 0, 0, 1}));  // above the total
  // Uneven changes: 0.5 alone exceeds 0.3 -> compute at step 2; then 0.05, 0.05, 0.25 -> 0.35 > 0.3 at step 5.
  EXPECT_EQ(derive_unit_schedule({0, 0.5, 0.05, 0.05, 0.25, 0.01, 0.01}, 0.3), (V{1, 1, 0, 0, 1, 0, 1}));
  EXPECT_EQ(derive_unit_schedule({0.0}, 0.1), (V{1}));
  EXPECT_EQ(derive_unit_schedule({0, 9.0}, 0.1), (V{1, 1}));
}

namespace {
ChangeCurves toy_curves(int depth, int steps) {
  ChangeCurves c;
  c.depth = depth;
  c.steps = steps;
  c.runs = 1;
  for (int u = 0; u < 6 * depth; ++u) {
    c.units.push_back("u" + std::to_string(u));
    std::vector<double> curve(steps, 0.0);
    for (int t = 1; t < steps; ++t) curve[t] = 0.01 * (u + 1) * (1 + t % 3);
    c.l1rel.push_back(curve);
  }
  c.timesteps.assign(steps, 500.f);
  return c;
}
}  // namespace

TEST(BlockCache, ScheduleFilesRoundTripAndTheirErrors) {
  const std::string d = temp_dir();
  const ChangeCurves c = toy_curves(2, 10);
  EXPECT_EQ(ChangeCurves::from_json(nlohmann::json::parse(c.to_json().dump())).l1rel, c.l1rel);
  const BlockSchedule s = derive_schedule(c, 0.1);
  for (size_t u = 0; u < s.compute.size(); ++u) EXPECT_EQ(s.compute[u], derive_unit_schedule(c.l1rel[u], 0.1));
  s.save(d + "/s.json");
  const BlockSchedule back = BlockSchedule::load(d + "/s.json");
  EXPECT_EQ(back.compute, s.compute);
  EXPECT_EQ(back.steps, 10);
  EXPECT_EQ(back.depth, 2);
  EXPECT_DOUBLE_EQ(back.delta, 0.1);
  EXPECT_GT(s.compute_fraction(), 0.2);
  EXPECT_LT(s.compute_fraction(), 1.0);
  // The policy computes exactly the scheduled units, and refuses a schedule for another model or step count.
  auto p = make_cache_policy("blockcache", {{"schedule", d + "/s.json"}}, ditto::test::stdit3_policy_context(2, 10));
  std::vector<float> ts(10, 500.f);
  p->reset(ts);
  for (int t = 0; t < 10; ++t) {
    const StepPlan plan = p->plan(t);
    ASSERT_EQ(plan.mode, StepMode::Compute);
    for (size_t u = 0; u < s.compute.size(); ++u) EXPECT_EQ(plan.compute[u], s.compute[u][t]) << u << " " << t;
  }
  EXPECT_TRUE(p->reuses_units());
  auto expect_error = [](auto f, const std::string& text) {
    try {
      f();
      ADD_FAILURE() << "no error, expected: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_error([&] { make_cache_policy("blockcache", {{"schedule", d + "/s.json"}}, ditto::test::stdit3_policy_context(4, 10)); }, "is for a depth-2 model");
  expect_error([&] { make_cache_policy("blockcache", {{"schedule", d + "/s.json"}}, ditto::test::stdit3_policy_context(2, 30)); }, "is for 10 steps");
  expect_error([&] { make_cache_policy("blockcache", {}, ditto::test::stdit3_policy_context(2, 10)); }, "needs a schedule");
  expect_error([&] { make_cache_policy("blockcache", {{"schedule", d + "/none.json"}}, ditto::test::stdit3_policy_context(2, 10)); }, "cannot read");
  nlohmann::json j = s.to_json();
  j["units"][3]["compute_steps"] = {2, 10};
  ditto::test::write_bytes(d + "/bad.json", j.dump());
  expect_error([&] { BlockSchedule::load(d + "/bad.json"); }, "must compute the first and the last step");
  j = s.to_json();
  j["units"].erase(0);
  ditto::test::write_bytes(d + "/short.json", j.dump());
  expect_error([&] { BlockSchedule::load(d + "/short.json"); }, "11 units, a depth-2 model has 12");
  ditto::test::write_bytes(d + "/junk.json", "{\"format\": \"ditto-blockcache-schedule\", \"depth\": ");
  expect_error([&] { BlockSchedule::load(d + "/junk.json"); }, "junk.json");
}

TEST(BlockCache, ProfileThenSampleWithTheSchedule) {
  const std::string d = temp_dir();
  const std::string model = "--config ditto-demo-tiny --random-weights --weights-seed 3 ";
  auto r = run_ditto("profile " + model + "--prompts 2 --seeds 2 --steps 8 --deltas 0,0.5,100 --quiet --out " + d + "/p");
  ASSERT_EQ(r.code, 0) << r.output;
  const ChangeCurves c = ChangeCurves::from_json(nlohmann::json::parse(read_bytes(d + "/p/curves.json")));
  ASSERT_EQ(c.units.size(), 6u);  // depth 1: 2 blocks x 3 units
  EXPECT_EQ(c.units[0], "spatial_blocks.0.attn");
  EXPECT_EQ(c.runs, 4);
  for (const auto& curve : c.l1rel) {
    EXPECT_EQ(curve[0], 0.0);
    for (int t = 1; t < 8; ++t) EXPECT_GT(curve[t], 0.0);
  }
  EXPECT_NE(read_bytes(d + "/p/curves.csv").find("unit,step1,step2"), std::string::npos);
  EXPECT_EQ(read_bytes(d + "/p/heatmap.png").substr(1, 3), "PNG");
  // delta 0 computes everything; 100 only the first and last steps; the file matches its derivation.
  EXPECT_DOUBLE_EQ(BlockSchedule::load(d + "/p/schedule-delta-0.json").compute_fraction(), 1.0);
  EXPECT_DOUBLE_EQ(BlockSchedule::load(d + "/p/schedule-delta-100.json").compute_fraction(), 2.0 / 8);
  const BlockSchedule half = BlockSchedule::load(d + "/p/schedule-delta-0.5.json");
  EXPECT_EQ(half.compute, derive_schedule(c, 0.5).compute);
  // Under --sp 2 the curves are the same sums over shards.
  r = run_ditto_mpi(2, "profile " + model + "--prompts 2 --seeds 2 --steps 8 --deltas 0.5 --quiet --sp 2 --out " + d + "/p2");
  ASSERT_EQ(r.code, 0) << r.output;
  const ChangeCurves c2 = ChangeCurves::from_json(nlohmann::json::parse(read_bytes(d + "/p2/curves.json")));
  for (size_t u = 0; u < c.units.size(); ++u)
    for (int t = 0; t < 8; ++t) EXPECT_NEAR(c2.l1rel[u][t], c.l1rel[u][t], 1e-6 * (1 + c.l1rel[u][t])) << u << " " << t;
  // Sampling with the all-compute schedule is the uncached sample; with delta 0.5 it computes the
  // schedule's fraction.
  const std::string sample = "sample " + model + "--random-caption 4 --steps 8 --quiet --no-mp4 ";
  r = run_ditto(sample + "--out " + d + "/none");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_ditto(sample + "--cache blockcache --schedule " + d + "/p/schedule-delta-0.json --out " + d + "/all");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(at::equal(load_safetensors(d + "/all/latent.safetensors").at("z"), load_safetensors(d + "/none/latent.safetensors").at("z")));
  EXPECT_EQ(read_bytes(d + "/all/video.y4m"), read_bytes(d + "/none/video.y4m"));
  r = run_ditto(sample + "--cache blockcache --schedule " + d + "/p/schedule-delta-0.5.json --out " + d + "/half");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto m = nlohmann::json::parse(read_bytes(d + "/half/metrics.json"));
  EXPECT_DOUBLE_EQ(m["cache"]["compute_fraction"].get<double>(), half.compute_fraction());
  EXPECT_EQ(m["cache"]["policy"], "blockcache");
  // A schedule for other steps is refused with its reason.
  r = run_ditto("sample " + model + "--random-caption 4 --steps 9 --quiet --cache blockcache --schedule " + d +
                "/p/schedule-delta-0.5.json --out " + d + "/x");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("is for 8 steps, the run has 9"), std::string::npos) << r.output;
}

TEST(BlockCache, CalibrationLowersItsLossAndTheIdentityChangesNothing) {
  const std::string d = temp_dir();
  const std::string model = "--config ditto-demo-tiny --random-weights --weights-seed 3 ";
  auto r = run_ditto("profile " + model + "--prompts 2 --seeds 1 --steps 10 --deltas 0.3 --quiet --out " + d + "/p");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string schedule = d + "/p/schedule-delta-0.3.json";
  r = run_ditto("calibrate " + model + "--schedule " + schedule + " --prompts 4 --epochs 5 --lr 3e-3 --out " + d + "/c.safetensors");
  ASSERT_EQ(r.code, 0) << r.output;
  std::regex line(R"(calibrate epoch (\d+)/5 loss ([0-9.eE+-]+) \(uncalibrated reuse ([0-9.eE+-]+))");
  std::vector<double> loss, uncalibrated;
  for (std::sregex_iterator it(r.output.begin(), r.output.end(), line), end; it != end; ++it) {
    loss.push_back(std::stod((*it)[2]));
    uncalibrated.push_back(std::stod((*it)[3]));
  }
  ASSERT_EQ(loss.size(), 5u) << r.output;
  EXPECT_LT(loss.back(), 0.8 * loss.front()) << r.output;
  EXPECT_LT(loss.back(), uncalibrated.back()) << r.output;  // better than reusing as is
  // The layers load for the schedule's units only and are not the identity.
  const auto cal = load_safetensors(d + "/c.safetensors");
  ASSERT_FALSE(cal.empty());
  for (const auto& [name, t] : cal) {
    EXPECT_EQ(name.rfind("unit.", 0), 0u) << name;
    EXPECT_GT(t.abs().max().item<double>(), 0.0) << name;
  }
  // Sampling with the identity (zero) layers equals sampling without calibration; trained ones differ.
  r = run_ditto("calibrate " + model + "--schedule " + schedule + " --epochs 0 --quiet --out " + d + "/id.safetensors");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string sample = "sample " + model + "--random-caption 4 --steps 10 --quiet --no-mp4 --cache blockcache --schedule " + schedule + " ";
  r = run_ditto(sample + "--out " + d + "/plain");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_ditto(sample + "--cache-opt calibration=" + d + "/id.safetensors --out " + d + "/identity");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_ditto(sample + "--cache-opt calibration=" + d + "/c.safetensors --out " + d + "/calibrated");
  ASSERT_EQ(r.code, 0) << r.output;
  const at::Tensor plain = load_safetensors(d + "/plain/latent.safetensors").at("z");
  EXPECT_TRUE(at::equal(load_safetensors(d + "/identity/latent.safetensors").at("z"), plain));
  EXPECT_FALSE(at::equal(load_safetensors(d + "/calibrated/latent.safetensors").at("z"), plain));
  // A calibration for another model is refused by name.
  r = run_ditto("sample --config ditto-demo --random-weights --random-caption 4 --steps 10 --quiet --cache blockcache "
                "--schedule " + schedule + " --out " + d + "/x");
  EXPECT_NE(r.output.find("is for a depth-1 model, this one has depth 4"), std::string::npos) << r.output;
}

TEST(BlockCache, PerUnitAdaCacheRatesByHand) {
  // Unit u's residual at step s is (1 + g_u (s - 1)) * ones: its relative change between computed
  // steps a < b is g_u (b - a) / (1 + g_u (a - 1)), divided by b - a for the metric.
  const std::vector<double> g = {0.01, 0.1, 0.5, 0.01, 0.1, 0.5};
  auto policy = make_cache_policy("adacache", {{"per", "unit"}, {"codebook", "0.05:4/0.2:2/1.0:1"}}, ditto::test::stdit3_policy_context(1, 10));
  policy->reset(std::vector<float>(10, 500.f));
  ASSERT_TRUE(policy->observes_units());
  ASSERT_TRUE(policy->reuses_units());
  using V = std::vector<uint8_t>;
  std::vector<V> masks;
  for (int step = 0; step < 5; ++step) {
    const StepPlan p = policy->plan(step);
    masks.push_back(p.compute);
    for (int u = 0; u < 6; ++u)
      if (p.compute[u]) policy->observe_unit(u, at::full({4}, 1 + g[u] * step, at::kDouble), step);
    policy->apply(policy->decide(policy->local_sums(at::Tensor(), step), step), step);
  }
  EXPECT_EQ(masks[0], V(6, 1));  // steps 1 and 2 compute everything
  EXPECT_EQ(masks[1], V(6, 1));
  // Step 2's metrics 0.01, 0.1, 0.5 -> rates 4, 2, 1: next computes at steps 6, 4, 3.
  EXPECT_EQ(masks[2], (V{0, 0, 1, 0, 0, 1}));
  // Step 3: units 2, 5 changed 0.5 / 1.5 = 0.33 -> rate 1 (step 4); units 1, 4 are due at step 4.
  EXPECT_EQ(masks[3], (V{0, 1, 1, 0, 1, 1}));
  // Step 4: units 1, 4: 0.2 / 1.1 over 2 steps = 0.091 -> rate 2 (step 6); units 2, 5: 0.5 / 2 = 0.25 -> 1.
  EXPECT_EQ(masks[4], (V{0, 0, 1, 0, 0, 1}));
  const auto log = policy->log_entry(4);
  EXPECT_NEAR(log["metrics"][2].get<double>(), 0.5 / 2.5, 1e-12);
  // per=block: a block's three units share one metric and one rate.
  auto block = make_cache_policy("adacache", {{"per", "block"}}, ditto::test::stdit3_policy_context(2, 30));
  EXPECT_EQ(block->decision_size(), 2u * 4);
  EXPECT_THROW(make_cache_policy("adacache", {{"per", "unit"}, {"moreg", "1"}}, ditto::test::stdit3_policy_context(2, 30)), Error);
  EXPECT_THROW(make_cache_policy("adacache", {{"per", "pixel"}}, ditto::test::stdit3_policy_context(2, 30)), Error);
}
