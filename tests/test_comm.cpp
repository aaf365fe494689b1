// Communicators, process groups, the DSP layout switches and sequence/CFG-parallel sampling, run
// under mpirun at several world sizes; each P is checked against a single-rank computation.
#include <gtest/gtest.h>

#include "cache/cache_runner.h"
#include "dist/dsp_layout.h"
#include "dist/ulysses_layout.h"
#include "dist/mpi_communicator.h"
#include "dist/nccl_communicator.h"
#include "dist/parallel_layout.h"
#include "dist/video_sampler.h"
#include "model/error.h"
#include "model/family.h"
#include "model/opensora.h"
#include "model/layers.h"
#include "model/stdit3.h"
#include "model/wan.h"
#include "test_util.h"
#include "tiny_video.h"

using namespace ditto;

namespace {

MpiCommunicator& world() {
  static MpiCommunicator w(MPI_COMM_WORLD);
  return w;
}

const at::TensorOptions kF32 = at::TensorOptions().dtype(at::kFloat);

// Rank r sends rank j a [(r + 2j) % 4, 3] block filled with 100 r + j (some blocks are empty).
void check_all_to_all(Communicator& c, const at::Device& dev) {
  const int P = c.size(), r = c.rank();
  std::vector<at::Tensor> send, recv;
  int64_t expected_bytes = 0;
  for (int j = 0; j < P; ++j) {
    send.push_back(at::full({(r + 2 * j) % 4, 3}, 100.0 * r + j, kF32.device(dev)));
    recv.push_back(at::empty({(j + 2 * r) % 4, 3}, kF32.device(dev)));
    if (j != r) expected_bytes += send.back().numel() * 4;
  }
  c.reset_counters();
  c.all_to_all(send, recv);
  for (int j = 0; j < P; ++j) {
    EXPECT_EQ(recv[j].size(0), (j + 2 * r) % 4);
    if (recv[j].numel()) {
      EXPECT_EQ(recv[j].min().item<float>(), 100.0f * j + r);
      EXPECT_EQ(recv[j].max().item<float>(), 100.0f * j + r);
    }
  }
  EXPECT_EQ(c.counters().all_to_all.calls, 1);
  EXPECT_EQ(c.counters().all_to_all.bytes, expected_bytes);
}

void check_other_collectives(Communicator& c, const at::Device& dev) {
  const int P = c.size(), r = c.rank();
  // all_gather with per-rank sizes
  std::vector<at::Tensor> parts;
  for (int j = 0; j < P; ++j) parts.push_back(at::empty({j + 1}, kF32.device(dev)));
  c.all_gather(at::full({r + 1}, static_cast<float>(r), kF32.device(dev)), parts);
  for (int j = 0; j < P; ++j) EXPECT_EQ(parts[j].sum().item<float>(), static_cast<float>(j * (j + 1)));
  // all_reduce sum and max over several dtypes
  for (auto type : {at::kFloat, at::kDouble, at::kLong, at::kBFloat16}) {
    at::Tensor t = at::full({3}, r + 1, at::TensorOptions().dtype(type).device(dev));
    c.all_reduce(t, ReduceOp::Sum);
    EXPECT_EQ(t[1].item<double>(), P * (P + 1) / 2.0) << c10::toString(type);
    t.fill_(r);
    c.all_reduce(t, ReduceOp::Max);
    EXPECT_EQ(t[2].item<double>(), P - 1.0) << c10::toString(type);
  }
  // broadcast from the last rank
  at::Tensor b = at::full({2, 2}, static_cast<float>(r), kF32.device(dev));
  c.broadcast(b, P - 1);
  EXPECT_EQ(b.sum().item<float>(), 4.0f * (P - 1));
  c.barrier();
}


// Random inputs of stdit3-tiny: a latent [B, 4, T, H, W] (8 H x 8 W pixels, 24 fps), the batch's
// timesteps, an 8-token caption of 32 channels, every token valid (x drawn first, then the caption).
ForwardArgs stdit3_args(uint64_t seed, const std::vector<float>& timesteps, int64_t t, int64_t h, int64_t w) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t B = static_cast<int64_t>(timesteps.size());
  ForwardArgs a;
  a.x = at::randn({B, 4, t, h, w}, gen, kF32);
  a.timestep = at::tensor(timesteps);
  a.y = at::randn({B, 1, 8, 32}, gen, kF32);
  a.fps = at::full({1}, 24.0f);
  a.height = at::full({1}, 8.0f * h);
  a.width = at::full({1}, 8.0f * w);
  return a;
}

}  // namespace

TEST(Comm, MpiAllToAllUnevenCounts) { check_all_to_all(world(), at::kCPU); }

TEST(Comm, MpiOtherCollectives) { check_other_collectives(world(), at::kCPU); }

TEST(Comm, MpiStagesCudaTensors) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible";
  const at::Device dev(at::kCUDA, world().rank() % static_cast<int>(at::getNumGPUs()));
  check_all_to_all(world(), dev);
  check_other_collectives(world(), dev);
}

TEST(Comm, NcclBackendOneRankPerGpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA GPU visible";
  // NCCL refuses two ranks on one GPU: each rank gets a communicator of its own.
  auto c = make_nccl_communicator(MPI_COMM_SELF, world().rank() % static_cast<int>(at::getNumGPUs()), 60);
  const at::Device dev(at::kCUDA, world().rank() % static_cast<int>(at::getNumGPUs()));
  check_all_to_all(*c, dev);
  check_other_collectives(*c, dev);
}

TEST(Comm, SplitMakesSubGroups) {
  const int r = world().rank(), P = world().size();
  auto sub = world().split(r % 2, r);
  int expected_size = 0, expected_sum = 0;
  for (int j = 0; j < P; ++j)
    if (j % 2 == r % 2) ++expected_size, expected_sum += j;
  EXPECT_EQ(sub->size(), expected_size);
  EXPECT_EQ(sub->rank(), r / 2);
  at::Tensor t = at::full({1}, r, at::kLong);
  sub->all_reduce(t, ReduceOp::Sum);
  EXPECT_EQ(t.item<int64_t>(), expected_sum);
}

TEST(Layout, WorldLayoutAndGroups) {
  const int P = world().size();
  EXPECT_THROW(make_world_layout(P, 0, P + 1, 1), Error);
  EXPECT_THROW(make_world_layout(P, 0, 1, 3), Error);
  EXPECT_THROW(make_world_layout(6, 0, 4, 1), Error);
  TokenGrid grid;
  grid.t = 15, grid.h = 3, grid.w = 5;
  EXPECT_THROW(STDiT3::random(builtin_config("stdit3-tiny"), 1, kF32).check_layout("dsp", 16, grid), Error);
  const WorldLayout l = make_world_layout(8, 5, 2, 2);  // rank 5 = dp 1, cfg 0, sp 1
  EXPECT_EQ(l.dp, 2);
  EXPECT_EQ(l.dp_index, 1);
  EXPECT_EQ(l.cfg_index, 0);
  EXPECT_EQ(l.sp_index, 1);
  if (P % 2 == 0) {
    const WorldLayout w = make_world_layout(P, world().rank(), P / 2, 2);
    ProcessGroups g = make_process_groups(world(), w);
    EXPECT_EQ(g.sp->size(), P / 2);
    EXPECT_EQ(g.cfg->size(), 2);
    EXPECT_EQ(g.video->size(), P);
    EXPECT_EQ(g.dp->size(), 1);
    EXPECT_EQ(g.sp->rank(), w.sp_index);
    EXPECT_EQ(g.cfg->rank(), w.cfg_index);
  }
}

TEST(Dsp, SwitchesAreExactSlicesAndCountTheirBytes) {
  const int P = world().size(), r = world().rank();
  const int64_t B = 2, T = 7, S = 5, C = 3;  // neither T nor S divisible by 2, 3 or 4
  at::Tensor full = at::arange(B * T * S * C, kF32).reshape({B, T, S, C});
  DspLayout layout(world(), T, S);
  const Split& t = layout.frames();
  const Split& s = layout.positions();
  at::Tensor space = full.narrow(2, s.offsets[r], s.counts[r]).contiguous();
  world().reset_counters();
  at::Tensor frames = layout.to_frames(space);
  EXPECT_TRUE(at::equal(frames, full.narrow(1, t.offsets[r], t.counts[r])));
  EXPECT_TRUE(at::equal(layout.to_space(frames), space));
  // Bytes sent by this rank: its positions of the other ranks' frames, then the reverse.
  int64_t expected = 0;
  for (int j = 0; j < P; ++j)
    if (j != r) expected += (t.counts[j] * s.counts[r] + t.counts[r] * s.counts[j]) * B * C * 4;
  EXPECT_EQ(world().counters().all_to_all.bytes, expected);
  EXPECT_EQ(world().counters().all_to_all.calls, 2);
}

TEST(SequenceParallel, ForwardMatchesOneRankAndMovesTheAnalyticBytes) {
  // Stock STDiT3, and with the demo model's temporal position embedding (added to each rank's
  // spatial shard for every frame).
  for (bool temporal_pos : {false, true}) {
    SCOPED_TRACE(temporal_pos ? "temporal_pos_embed" : "stock");
    const int P = world().size(), r = world().rank();
    STDiT3Config c = builtin_config("stdit3-tiny");
    c.temporal_pos_embed = temporal_pos;
    STDiT3 m = STDiT3::random(c, 3, kF32);
    ForwardArgs a = stdit3_args(4, {700.0f, 300.0f}, 5, 6, 9);  // T' = 5, S = 3 x 5 = 15
    a.mask = at::tensor({1, 1, 1, 1, 0, 0, 0, 0}, at::kLong).reshape({1, 8});
    const Conditioning cond = m.condition(a);
    at::Tensor tokens = layers::patchify(a.x, c.patch_size);
    at::Tensor reference = m.forward_tokens(tokens, 0, cond);  // one rank, whole grid
    DspLayout layout(world(), cond.grid.t, cond.grid.s());
    const Split& s = layout.positions();
    world().reset_counters();
    at::Tensor out = m.forward_tokens(tokens.narrow(2, s.offsets[r], s.counts[r]), s.offsets[r], cond, &layout);
    EXPECT_LT(ditto::test::rel_err(out, reference.narrow(2, s.offsets[r], s.counts[r])), 1e-5);
    // Two all-to-alls per block pair; summed over ranks they move 2 (TS - sum_r T_r S_r) B C e bytes
    // per pair, which is 2 (P - 1) / P |x| when both T and S divide evenly.
    EXPECT_EQ(world().counters().all_to_all.calls, 2 * c.depth);
    at::Tensor bytes = at::tensor({world().counters().all_to_all.bytes}, at::kLong);
    world().all_reduce(bytes, ReduceOp::Sum);
    int64_t diag = 0;
    for (int j = 0; j < P; ++j) diag += layout.frames().counts[j] * s.counts[j];
    const int64_t elem = 2 * c.hidden_size * 4;  // B * C * sizeof(float)
    EXPECT_EQ(bytes.item<int64_t>(), c.depth * 2 * (cond.grid.t * cond.grid.s() - diag) * elem);
  }
}

TEST(SequenceParallel, EvenSplitMovesTwoPMinusOneOverPOfTheActivation) {
  const int P = world().size();
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 5, kF32);
  const ForwardArgs a = stdit3_args(6, {500.0f}, 12, 2, 24);  // T' = 12 and S = 12 divide by 1, 2, 3, 4
  const Conditioning cond = m.condition(a);
  DspLayout layout(world(), cond.grid.t, cond.grid.s());
  const Split& s = layout.positions();
  at::Tensor tokens = layers::patchify(a.x, c.patch_size);
  world().reset_counters();
  m.forward_tokens(tokens.narrow(2, s.offsets[world().rank()], s.counts[world().rank()]), s.offsets[world().rank()],
                   cond, &layout);
  at::Tensor bytes = at::tensor({world().counters().all_to_all.bytes}, at::kLong);
  world().all_reduce(bytes, ReduceOp::Sum);
  const int64_t activation = 1 * cond.grid.t * cond.grid.s() * c.hidden_size * 4;  // |x| in bytes
  EXPECT_EQ(bytes.item<int64_t>() * P, c.depth * 2 * (P - 1) * activation);
}

TEST(SequenceParallel, SamplingMatchesOneRankWithAndWithoutCfgParallel) {
  const int P = world().size(), r = world().rank();
  // The stock block, and the demo's experimental per-frame modulations (terms broadcast over each
  // rank's share of a frame's tokens; with the caption, per row of the CFG batch).
  for (int frame_modulation : {0, 1, 2}) {  // none, per frame, per frame reading the caption
    STDiT3Config c = builtin_config("stdit3-tiny");
    c.frame_modulation = frame_modulation > 0;
    c.frame_caption_modulation = frame_modulation == 2;
    STDiT3 m = STDiT3::random(c, 7, kF32);
    VideoRequest req = ditto::test::tiny_video_request(8, 40, 72, /*valid_tokens=*/6);  // 5 x 9: padded to 3 x 5 tokens
    req.cfg_scale = 6.0;
    SamplerOptions so;
    so.steps = 3;
    RectifiedFlow rf(so, opensora_transform({40, 72, 51, LatentSpace::OpenSoraV12}));
    const at::Tensor reference = sample_video(m, rf, req, {});
    at::Tensor z = sample_video(m, rf, req, {&world(), nullptr});
    EXPECT_LT(ditto::test::rel_err(z, reference), 1e-5) << "sp " << P << ", frame modulation " << frame_modulation;
    if (P % 2 == 0) {
      const WorldLayout w = make_world_layout(P, r, P / 2, 2);
      ProcessGroups g = make_process_groups(world(), w);
      g.cfg->reset_counters();
      at::Tensor zc = sample_video(m, rf, req, {g.sp.get(), g.cfg.get()});
      EXPECT_LT(ditto::test::rel_err(zc, reference), 1e-5) << "cfg 2 x sp " << P / 2 << ", frame modulation " << frame_modulation;
      EXPECT_EQ(g.cfg->counters().all_gather.calls, so.steps);  // one exchange of predictions per step
    }
  }
}

TEST(SequenceParallel, NegativeCaptionGuidesAsTwoSeparateModelCalls) {
  // A negative caption (its own mask: 4 valid tokens against the prompt's 6) replaces the null
  // caption in the unconditional branch. Reference: the sampling loop with the two branches as two
  // separate whole-video forward passes, u + s (c - u); every layout (batched, sp, cfg-parallel) agrees.
  const int P = world().size(), r = world().rank();
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 7, kF32);
  VideoRequest req = ditto::test::tiny_video_request(8, 32, 64, /*valid_tokens=*/6);  // 4 x 8 latent: no padding
  req.cfg_scale = 4.0;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(99);
  req.negative_y = at::randn(req.caption_y.sizes(), gen, at::kFloat);
  req.negative_mask = at::zeros_like(req.caption_mask);
  req.negative_mask.narrow(1, 0, 4).fill_(1);
  SamplerOptions so;
  so.steps = 3;
  RectifiedFlow rf(so, opensora_transform({32, 64, 51, LatentSpace::OpenSoraV12}));
  auto branch = [&](const at::Tensor& z, float t, const at::Tensor& y, const at::Tensor& mask) {
    ForwardArgs a;
    a.x = z;
    a.timestep = at::full({1}, t, kF32);
    a.y = y;
    a.mask = mask;
    a.fps = at::full({1}, req.fps, kF32);
    a.height = at::full({1}, req.height, kF32);
    a.width = at::full({1}, req.width, kF32);
    return m.forward(a).narrow(1, 0, c.in_channels);
  };
  const GuidedFn separate = [&](const at::Tensor& z, float t, int) {
    const at::Tensor u = branch(z, t, req.negative_y, req.negative_mask);
    return u + req.cfg_scale * (branch(z, t, req.caption_y, req.caption_mask) - u);
  };
  const at::Tensor reference = sample(rf, req.z0, separate);
  const at::Tensor batched = sample_video(m, rf, req, {});
  EXPECT_LT(ditto::test::rel_err(batched, reference), 1e-5);
  VideoRequest plain = req;
  plain.negative_y = plain.negative_mask = at::Tensor();
  EXPECT_GT(ditto::test::rel_err(sample_video(m, rf, plain, {}), reference), 1e-3);  // the negative mattered
  EXPECT_LT(ditto::test::rel_err(sample_video(m, rf, req, {&world(), nullptr}), reference), 1e-5) << "sp " << P;
  if (P % 2 == 0) {
    const WorldLayout w = make_world_layout(P, r, P / 2, 2);
    ProcessGroups g = make_process_groups(world(), w);
    EXPECT_LT(ditto::test::rel_err(sample_video(m, rf, req, {g.sp.get(), g.cfg.get()}), reference), 1e-5)
        << "cfg 2 x sp " << P / 2;
  }
  // A negative caption of another shape is refused by name.
  VideoRequest bad = req;
  bad.negative_mask = at::ones({1, 5}, at::kLong);
  EXPECT_THROW(sample_video(m, rf, bad, {}), Error);
  VideoRequest unguided = req;
  unguided.cfg_scale = 1.0;
  EXPECT_THROW(sample_video(m, rf, unguided, {}), Error);
}

namespace {

// A 4-head tiny Wan (Ulysses up to 4 ranks) and a guided request for it of 3 x 3 x 3 tokens; the
// unconditional caption is each test's.
WanConfig four_head_wan() {
  WanConfig c = wan_builtin_config("wan-tiny");
  c.num_heads = 4;
  return c;
}
// A guided batch (2 x 4 x 3 x 6 x 6 latents, 27 tokens, two timesteps) through a tiny Wan on one
// rank: its context, its patch tokens and the one-rank output the sharded runs are checked against.
struct WanForward {
  WanForward(const Wan& m, uint64_t seed) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    DiTInputs a;
    a.x = at::randn({2, 4, 3, 6, 6}, gen, kF32);
    a.timestep = at::tensor({700.0f, 300.0f});
    a.y = at::randn({2, 8, 16}, gen, kF32);
    ctx = m.prepare(a);
    m.set_timestep(*ctx, a.timestep);
    tokens = layers::patchify(a.x, {1, 2, 2});
    reference = m.forward_tokens(tokens, 0, *ctx);
  }
  std::unique_ptr<DiTContext> ctx;
  at::Tensor tokens, reference;
};

VideoRequest wan_request(uint64_t seed) {
  VideoRequest req = ditto::test::tiny_wan_request(seed, 3, 6, 6);
  req.cfg_scale = 5.0;
  return req;
}

// Every policy decides and samples at P ranks (and in CFG-parallel pairs) as on one rank; a computed
// step issues `a2a_per_compute` all-to-alls and a reused stack none (first-block cache still runs its
// probe, the first block: `a2a_per_probe`).
void check_coordinated_caching(const DiT& m, const VideoRequest& req, Sampler& rf, int steps,
                               const std::vector<std::pair<std::string, PolicyOptions>>& policies,
                               int64_t a2a_per_compute, int64_t a2a_per_probe) {
  const int P = world().size(), r = world().rank();
  for (const auto& [name, options] : policies) {
    auto run = [&](const VideoGroups& g, Communicator* video, Communicator* watch, std::vector<int64_t>* a2a_per_step) {
      auto policy = make_cache_policy(name, options, policy_context(m, steps));
      CacheRunner runner(m, *policy, video);
      runner.begin_video(rf.timesteps());
      int64_t before = watch ? watch->counters().all_to_all.calls : 0;
      StepFn on_step = [&](int, const at::Tensor&) {
        if (!watch) return;
        a2a_per_step->push_back(watch->counters().all_to_all.calls - before);
        before = watch->counters().all_to_all.calls;
      };
      at::Tensor z = sample_video(m, rf, req, g, on_step, runner.token_forward());
      return std::make_pair(z, runner.report());
    };
    auto [z1, rep1] = run({}, nullptr, nullptr, nullptr);
    std::vector<int64_t> a2a;
    auto [zp, repp] = run({&world(), nullptr}, &world(), &world(), &a2a);
    EXPECT_LT(ditto::test::rel_err(zp, z1), 1e-5) << name << " sp " << P;
    EXPECT_EQ(repp["decisions"].size(), rep1["decisions"].size()) << name;
    for (size_t i = 0; i < rep1["decisions"].size(); ++i) {
      EXPECT_EQ(repp["decisions"][i]["mode"], rep1["decisions"][i]["mode"]) << name << " step " << i + 1;
      EXPECT_EQ(repp["decisions"][i]["units"], rep1["decisions"][i]["units"]) << name << " step " << i + 1;
      // A reused stack issues no all-to-all (first-block cache still runs its probe, the first block).
      if (P > 1 && (rep1["decisions"][i]["mode"] == "reuse" || rep1["decisions"][i]["mode"] == "reuse-output")) {
        EXPECT_EQ(a2a[i], name == "fbcache" ? a2a_per_probe : 0) << name << " step " << i + 1;
      }
      if (P > 1 && rep1["decisions"][i]["mode"] == "compute") {
        EXPECT_EQ(a2a[i], a2a_per_compute) << name;
      }
      // Rates equal exactly (the float metrics may differ in the last bit: sums over shards).
      for (const char* k : {"next_rate", "next_rates"})
        if (rep1["decisions"][i]["decision"].contains(k)) {
          EXPECT_EQ(repp["decisions"][i]["decision"][k], rep1["decisions"][i]["decision"][k]) << name << " step " << i + 1;
        }
    }
    if (name != "none") {
      EXPECT_LT(rep1["units_computed"], rep1["units_total"]) << name << " skipped nothing";
    }
    if (P % 2 == 0) {  // CFG-parallel pairs: the metric covers both halves, as batched CFG's does
      const WorldLayout w = make_world_layout(P, r, P / 2, 2);
      ProcessGroups g = make_process_groups(world(), w);
      auto [zc, repc] = run({g.sp.get(), g.cfg.get()}, g.video.get(), nullptr, nullptr);
      EXPECT_LT(ditto::test::rel_err(zc, z1), 1e-5) << name << " cfg 2 x sp " << P / 2;
      for (size_t i = 0; i < rep1["decisions"].size(); ++i)
        EXPECT_EQ(repc["decisions"][i]["mode"], rep1["decisions"][i]["mode"]) << name << " cfg step " << i + 1;
    }
  }
}

}  // namespace

TEST(CoordinatedCaching, EveryPolicyDecidesAndSamplesAsOneRank) {
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 11, kF32);
  const VideoRequest req = ditto::test::tiny_video_request(12, 40, 72);
  SamplerOptions so;
  so.steps = 14;
  RectifiedFlow rf(so, opensora_transform({40, 72, 51, LatentSpace::OpenSoraV12}));
  // Thresholds loose enough that the random model skips steps under every adaptive policy.
  const std::vector<std::pair<std::string, PolicyOptions>> policies = {
      {"none", {}},
      {"static", {{"interval", "3"}}},
      {"pab", {{"window", "0:1001"}}},
      {"adacache", {{"codebook", "0.5:3/1.5:2/100:1"}, {"moreg", "1"}}},
      {"adacache", {{"codebook", "0.5:3/1.5:2/100:1"}, {"per", "unit"}}},
      {"teacache", {{"threshold", "2.5"}}},
      {"fbcache", {{"threshold", "0.6"}}},
      {"magcache", {{"ratios", "wan2.1-t2v-1.3b"}, {"threshold", "0.3"}}}};
  check_coordinated_caching(m, req, rf, so.steps, policies, 2 * c.depth, 2);
}

TEST(CoordinatedCaching, EveryPolicyOnWanUnderUlyssesDecidesAndSamplesAsOneRank) {
  // A 4-head Wan (Ulysses up to 4 ranks), guided UniPC sampling with an all-zero unconditional caption.
  const WanConfig c = four_head_wan();
  const Wan m = Wan::random(c, 13, kF32);
  VideoRequest req = wan_request(14);
  add_benchmark_unconditional(req, m);
  SamplerOptions so;
  so.name = "unipc";
  so.steps = 12;
  so.shift = 3.0;
  auto sampler = make_sampler(so);
  const std::vector<std::pair<std::string, PolicyOptions>> policies = {
      {"none", {}},
      {"static", {{"interval", "3"}}},
      {"pab", {{"window", "0:1001"}}},
      {"adacache", {{"codebook", "0.5:3/1.5:2/100:1"}}},  // no MoReg on Wan (its frames span ranks)
      {"adacache", {{"codebook", "0.5:3/1.5:2/100:1"}, {"per", "unit"}}},
      {"teacache", {{"threshold", "0.5"}, {"coefficients", "1/0"}}},
      {"fbcache", {{"threshold", "0.6"}}},
      {"magcache", {{"threshold", "0.3"}}},
      {"easycache", {{"threshold", "1.5"}, {"warmup", "2"}}}};
  check_coordinated_caching(m, req, *sampler, so.steps, policies, 2 * c.num_layers, 2);
  EXPECT_THROW(make_cache_policy("adacache", {{"moreg", "1"}}, policy_context(m, so.steps)), Error);
}

TEST(Ulysses, WanForwardAndSamplingMatchOneRankAndMoveTheAnalyticBytes) {
  // A 4-head Wan over 27 tokens (3 x 3 x 3): uneven token shares at 2 and 4 ranks, uneven head shares
  // at 3; every rank's output equals its share of the one-rank forward.
  const int P = world().size(), r = world().rank();
  const WanConfig c = four_head_wan();
  const Wan m = Wan::random(c, 7, kF32);
  const WanForward f(m, 8);
  const auto& ctx = f.ctx;
  const at::Tensor &tokens = f.tokens, &reference = f.reference;  // [2, 3, 9, 16] tokens
  UlyssesLayout layout(world(), ctx->grid, c.num_heads);
  world().reset_counters();
  const at::Tensor out = m.forward_tokens(layout.shard(tokens), layout.shard_begin(), *ctx, &layout);
  const int64_t begin = layout.tokens().offsets[r], n = layout.tokens().counts[r];
  const at::Tensor mine = reference.reshape({2, 1, 27, reference.size(3)}).narrow(2, begin, n);
  EXPECT_LT(ditto::test::rel_err(out, mine), 1e-5) << "ulysses " << P;
  // One all-to-all each way around each self-attention (q, k and v together), none elsewhere; the
  // bytes are the analytic count: my tokens of the others' heads (q, k, v), my heads of their tokens.
  EXPECT_EQ(world().counters().all_to_all.calls, 2 * c.num_layers);
  int64_t expected = 0;
  const int64_t D = c.head_dim();
  for (int j = 0; j < P; ++j)
    if (j != r) expected += (3 * n * layout.heads().counts[j] + layout.heads().counts[r] * layout.tokens().counts[j]) * 2 * D * 4;
  EXPECT_EQ(world().counters().all_to_all.bytes, c.num_layers * expected);
  EXPECT_EQ(layout.bytes(AttentionScope::Video, 2, c.dim, 4), expected);

  // Sampling (guided, with a negative caption): every layout gives the one-rank latent.
  VideoRequest req = wan_request(9);
  req.negative_y = at::zeros({1, 1, 8, 16});
  req.negative_mask = at::ones({1, 8}, at::kLong);
  SamplerOptions so;
  so.name = "unipc";
  so.steps = 4;
  so.shift = 5.0;
  auto sampler = make_sampler(so);
  const at::Tensor one = sample_video(m, *sampler, req, {});
  EXPECT_LT(ditto::test::rel_err(sample_video(m, *sampler, req, {&world(), nullptr}), one), 1e-5) << "sp " << P;
  if (P % 2 == 0) {
    const WorldLayout w = make_world_layout(P, r, P / 2, 2);
    ProcessGroups g = make_process_groups(world(), w);
    EXPECT_LT(ditto::test::rel_err(sample_video(m, *sampler, req, {g.sp.get(), g.cfg.get()}), one), 1e-5)
        << "cfg 2 x sp " << P / 2;
  }
}

// DSP's switches in frame groups (each group's all-to-all in flight while the previous group's spatial
// attention runs): the same output as one exchange each way, the same bytes in `groups` times the
// spatial switches' calls; groups beyond the fewest frames a rank holds are capped. T' = 8 frames:
// uneven over 3 ranks, two per rank over 4.
TEST(Dsp, FrameGroupsOverlapTheSwitchesAndGiveTheSameOutput) {
  const int P = world().size(), r = world().rank();
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 5, kF32);
  const ForwardArgs a = stdit3_args(9, {600.0f, 100.0f}, 8, 6, 10);  // T' = 8, S = 3 x 5 = 15
  const Conditioning cond = m.condition(a);
  DspLayout layout(world(), cond.grid.t, cond.grid.s());
  const Split& s = layout.positions();
  const at::Tensor all_tokens = layers::patchify(a.x, c.patch_size);
  const at::Tensor tokens = all_tokens.narrow(2, s.offsets[r], s.counts[r]);
  const at::Tensor reference = m.forward_tokens(all_tokens, 0, cond).narrow(2, s.offsets[r], s.counts[r]);
  world().reset_counters();
  const at::Tensor one = m.forward_tokens(tokens, s.offsets[r], cond, &layout);
  const CommCounters plain = world().counters();
  const int64_t fewest = *std::min_element(layout.frames().counts.begin(), layout.frames().counts.end());
  struct Restore {
    ~Restore() { set_dsp_frame_groups(1); }  // the later tests' default, whatever happens here
  } restore;
  for (int groups : {2, 3}) {
    set_dsp_frame_groups(groups);
    world().reset_counters();
    const at::Tensor grouped = m.forward_tokens(tokens, s.offsets[r], cond, &layout);
    const CommCounters overlapped = world().counters();
    set_dsp_frame_groups(1);
    const int64_t used = std::min<int64_t>(groups, fewest);
    EXPECT_LT(ditto::test::rel_err(grouped, one), 1e-6) << "P " << P << " groups " << groups;
    EXPECT_LT(ditto::test::rel_err(grouped, reference), 1e-5) << "P " << P << " groups " << groups;
    EXPECT_EQ(overlapped.all_to_all.calls, used * plain.all_to_all.calls) << "P " << P << " groups " << groups;
    EXPECT_EQ(overlapped.all_to_all.bytes, plain.all_to_all.bytes);
  }
  EXPECT_GE(fewest, 2);  // every P of the suite groups the frames
  EXPECT_THROW(set_dsp_frame_groups(0), Error);
}

// The exchanges in head groups (each group's all-to-all in flight while the previous group attends):
// the same output as one exchange each way, the same bytes in `groups` times the calls. An 8-head
// Wan: two groups at every P up to 4 (each rank holds at least two heads).
TEST(Ulysses, HeadGroupsOverlapTheExchangesAndGiveTheSameOutput) {
  const int P = world().size(), r = world().rank();
  WanConfig c = four_head_wan();
  c.num_heads = 8;
  c.dim = 48;  // head_dim 6, as the 4-head model
  const Wan m = Wan::random(c, 17, kF32);
  const WanForward f(m, 18);
  UlyssesLayout layout(world(), f.ctx->grid, c.num_heads);
  const at::Tensor x = layout.shard(f.tokens);
  world().reset_counters();
  const at::Tensor one = m.forward_tokens(x, layout.shard_begin(), *f.ctx, &layout);
  const CommCounters plain = world().counters();
  set_ulysses_head_groups(2);
  world().reset_counters();
  const at::Tensor grouped = m.forward_tokens(x, layout.shard_begin(), *f.ctx, &layout);
  const CommCounters overlapped = world().counters();
  set_ulysses_head_groups(1);
  EXPECT_LT(ditto::test::rel_err(grouped, one), 1e-6) << "P " << P << " rank " << r;
  EXPECT_EQ(overlapped.all_to_all.calls, 2 * plain.all_to_all.calls);
  EXPECT_EQ(overlapped.all_to_all.bytes, plain.all_to_all.bytes);
  const int64_t begin = layout.tokens().offsets[r], n = layout.tokens().counts[r];
  EXPECT_LT(ditto::test::rel_err(grouped, f.reference.reshape({2, 1, 27, f.reference.size(3)}).narrow(2, begin, n)), 1e-5);
  EXPECT_THROW(set_ulysses_head_groups(0), Error);
}

TEST(Ulysses, AModelOfTwoExpertsSamplesAsOneRankWithItsCacheRestartingAtTheSwitch) {
  // Wan 2.2's two experts (two heads each: Ulysses pairs) switching at t = 875, guided 4 / 3, with
  // TeaCache coordinated over the pair: the latent and every decision as on one rank.
  const int P = world().size(), r = world().rank();
  const auto m = random_dit("wan2.2-tiny", 17, kF32);
  VideoRequest req = wan_request(18);
  add_benchmark_unconditional(req, *m);
  req.cfg_scale = 4.0, req.cfg_scale_2 = 3.0;
  SamplerOptions so;
  so.name = "unipc", so.steps = 10, so.shift = 3.0;
  auto sampler = make_sampler(so);
  req.experts = experts_per_step(m->outline(), sampler->timesteps(), NAN);
  ASSERT_EQ(req.experts.front(), 0);
  ASSERT_EQ(req.experts.back(), 1);
  auto run = [&](const VideoGroups& g, Communicator* video) {
    auto policy = make_cache_policy("teacache", {{"threshold", "0.5"}, {"coefficients", "1/0"}}, policy_context(*m, so.steps));
    CacheRunner runner(*m, *policy, video);
    runner.begin_video(sampler->timesteps(), req.experts);
    at::Tensor z = sample_video(*m, *sampler, req, g, nullptr, runner.token_forward());
    return std::make_pair(z, runner.report());
  };
  auto [z1, rep1] = run({}, nullptr);
  if (P % 2 != 0) return;  // two heads: sequence-parallel pairs
  const WorldLayout w = make_world_layout(P, r, 2, 1);
  ProcessGroups g = make_process_groups(world(), w);
  auto [z2, rep2] = run({g.sp.get(), nullptr}, g.video.get());
  EXPECT_LT(ditto::test::rel_err(z2, z1), 1e-5);
  ASSERT_EQ(rep2["decisions"].size(), rep1["decisions"].size());
  bool reused = false;
  for (size_t i = 0; i < rep1["decisions"].size(); ++i) {
    EXPECT_EQ(rep2["decisions"][i]["mode"], rep1["decisions"][i]["mode"]) << "step " << i + 1;
    reused = reused || rep1["decisions"][i]["mode"] == "reuse";
    // Each expert's first step computes: the cache starts over at the switch.
    if (i == 0 || req.experts[i] != req.experts[i - 1]) {
      EXPECT_EQ(rep1["decisions"][i]["mode"], "compute") << "step " << i + 1;
    }
  }
  EXPECT_TRUE(reused);
}

TEST(KvGather, BeyondTheHeadCountWanMatchesOneRankAndMovesTheAnalyticBytes) {
  // A 2-head Wan over 27 tokens on P ranks: Ulysses up to 2, the K/V all-gather beyond (P = 3, 4);
  // every rank's output is its share of the one-rank forward, the bytes the analytic count, a guided
  // cached sampling run the one-rank latent and decisions.
  const int P = world().size(), r = world().rank();
  const Wan m = Wan::random(wan_builtin_config("wan-tiny"), 23, kF32);
  const WanForward f(m, 24);
  const auto& ctx = f.ctx;
  const at::Tensor &tokens = f.tokens, &reference = f.reference;
  EXPECT_EQ(m.layout_for(P, ctx->grid), P <= 2 ? "ulysses" : "kv-gather");
  KvGatherLayout layout(world(), ctx->grid);
  world().reset_counters();
  const at::Tensor out = m.forward_tokens(layout.shard(tokens), layout.shard_begin(), *ctx, &layout);
  const int64_t begin = layout.tokens().offsets[r], n = layout.tokens().counts[r];
  EXPECT_LT(ditto::test::rel_err(out, reference.reshape({2, 1, 27, reference.size(3)}).narrow(2, begin, n)), 1e-5);
  const int layers_count = 2, C = 24;
  EXPECT_EQ(world().counters().all_gather.calls, layers_count);
  const int64_t expected = 2 * n * (P - 1) * 2 * C * 4;  // K and V, batch 2, float32
  EXPECT_EQ(world().counters().all_gather.bytes, layers_count * expected);
  EXPECT_EQ(layout.bytes(AttentionScope::Video, 2, C, 4), expected);

  VideoRequest req = wan_request(25);
  add_benchmark_unconditional(req, m);
  SamplerOptions so;
  so.name = "unipc", so.steps = 6, so.shift = 3.0;
  auto sampler = make_sampler(so);
  auto run = [&](const VideoGroups& g, Communicator* video) {
    auto policy = make_cache_policy("teacache", {{"threshold", "0.5"}, {"coefficients", "1/0"}}, policy_context(m, so.steps));
    CacheRunner runner(m, *policy, video);
    runner.begin_video(sampler->timesteps());
    at::Tensor z = sample_video(m, *sampler, req, g, nullptr, runner.token_forward());
    return std::make_pair(z, runner.report());
  };
  auto [z1, rep1] = run({}, nullptr);
  auto [zp, repp] = run({&world(), nullptr}, &world());
  EXPECT_LT(ditto::test::rel_err(zp, z1), 1e-5) << "sp " << P;
  for (size_t i = 0; i < rep1["decisions"].size(); ++i)
    EXPECT_EQ(repp["decisions"][i]["mode"], rep1["decisions"][i]["mode"]) << "step " << i + 1;
}
