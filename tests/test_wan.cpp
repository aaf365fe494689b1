// Wan 2.1 / 2.2's transformer against diffusers' WanTransformer3DModel (tests/fixtures/wan_tiny, made by
// make_wan_fixtures.py): the forward and every block's output in float32 and float64, the official
// WanModel names loading to the same model, strict loading, configs, and sampling through the cache
// runner on one rank.
#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cache/cache_runner.h"
#include "dist/video_sampler.h"
#include "model/error.h"
#include "model/family.h"
#include "model/layers.h"
#include "model/safetensors.h"
#include "model/wan.h"
#include "test_util.h"
#include "tiny_video.h"

using namespace ditto;
using ditto::test::rel_err;
using ditto::test::temp_dir;

namespace {

const std::string kWan = std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/wan_tiny";

DiTInputs fixture_inputs(at::ScalarType dtype) {
  auto in = load_safetensors(kWan + "/forward_inputs.safetensors");
  DiTInputs a;
  a.x = in.at("hidden_states").to(dtype);
  a.timestep = in.at("timestep");
  a.y = in.at("encoder_hidden_states").to(dtype);
  return a;
}

// Official WanModel names for diffusers' (the inverse of the loader's rename, written out here).
std::string official_name(std::string n) {
  const std::vector<std::pair<std::string, std::string>> rules = {
      {"condition_embedder.text_embedder.linear_1.", "text_embedding.0."},
      {"condition_embedder.text_embedder.linear_2.", "text_embedding.2."},
      {"condition_embedder.time_embedder.linear_1.", "time_embedding.0."},
      {"condition_embedder.time_embedder.linear_2.", "time_embedding.2."},
      {"condition_embedder.time_proj.", "time_projection.1."},
      {"proj_out.", "head.head."},
      {".attn1.to_q.", ".self_attn.q."}, {".attn1.to_k.", ".self_attn.k."}, {".attn1.to_v.", ".self_attn.v."},
      {".attn1.to_out.0.", ".self_attn.o."}, {".attn1.norm_", ".self_attn.norm_"},
      {".attn2.to_q.", ".cross_attn.q."}, {".attn2.to_k.", ".cross_attn.k."}, {".attn2.to_v.", ".cross_attn.v."},
      {".attn2.to_out.0.", ".cross_attn.o."}, {".attn2.norm_", ".cross_attn.norm_"},
      {".norm2.", ".norm3."}, {".ffn.net.0.proj.", ".ffn.0."}, {".ffn.net.2.", ".ffn.2."},
      {".scale_shift_table", ".modulation"}};
  if (n == "scale_shift_table") return "head.modulation";
  for (const auto& [from, to] : rules) {
    const auto at = n.find(from);
    if (at != std::string::npos) return n.replace(at, from.size(), to);
  }
  return n;
}

}  // namespace

TEST(Wan, ForwardAndEveryBlockMatchDiffusersInFloat32) {
  const auto model = load_dit(kWan, at::TensorOptions().dtype(at::kFloat));
  ASSERT_EQ(model->family(), "wan");
  const auto ref = load_safetensors(kWan + "/forward_out.safetensors");
  std::map<std::string, at::Tensor> seen;
  const at::Tensor out = model->forward(fixture_inputs(at::kFloat), [&](const std::string& k, const at::Tensor& t) { seen[k] = t; });
  EXPECT_LT(rel_err(out, ref.at("out")), 1e-6);
  for (const char* b : {"blocks.0", "blocks.1"}) {
    ASSERT_TRUE(seen.count(b)) << b;
    EXPECT_LT(rel_err(seen.at(b), ref.at(b)), 1e-6) << b;
  }
}

TEST(Wan, Float64ForwardMatchesDiffusersFloat64Run) {
  // diffusers' float64 run keeps its LayerNorms and the blocks' residual adds in float32 (FP32LayerNorm,
  // hidden_states.float()), so the two agree to float32's resolution, not float64's; the RoPE tables
  // and the timestep sinusoid of the reference were recomputed in float64.
  const auto model = load_dit(kWan, at::TensorOptions().dtype(at::kDouble));
  const at::Tensor out = model->forward(fixture_inputs(at::kDouble));
  EXPECT_EQ(out.scalar_type(), at::kDouble);
  const auto ref = load_safetensors(kWan + "/forward_out.safetensors");
  EXPECT_LT(rel_err(out, ref.at("out_float64")), 5e-7);
  // And float32 against float64: the float32 run's own error (a few dozen ulps through two layers).
  const at::Tensor out32 = load_dit(kWan, at::TensorOptions().dtype(at::kFloat))->forward(fixture_inputs(at::kFloat));
  EXPECT_LT(rel_err(out32, out), 1e-5);
  EXPECT_GT(rel_err(out32, out), 0.0);
}

TEST(Wan, OfficialNamesAndConfigLoadTheSameModel) {
  const std::string dir = temp_dir() + "/official";
  std::system(("mkdir -p " + dir).c_str());
  NamedTensors renamed;
  for (const auto& [name, t] : load_safetensors(kWan + "/diffusion_pytorch_model.safetensors")) {
    EXPECT_EQ(wan_diffusers_name(official_name(name)), name);
    renamed.emplace_back(official_name(name), t);
  }
  save_safetensors(dir + "/diffusion_pytorch_model.safetensors", renamed);
  std::ofstream(dir + "/config.json") << R"({"_class_name": "WanModel", "model_type": "t2v", "patch_size": [1, 2, 2],
    "text_len": 8, "in_dim": 4, "dim": 24, "ffn_dim": 32, "freq_dim": 16, "text_dim": 16, "out_dim": 4,
    "num_heads": 2, "num_layers": 2, "eps": 1e-06})";
  // WanModel's config.json does not store text_dim (4096 in every released model); the tiny one names it.
  const auto a = load_dit(kWan, at::TensorOptions().dtype(at::kFloat));
  const auto b = load_dit(dir, at::TensorOptions().dtype(at::kFloat));
  EXPECT_TRUE(at::equal(a->forward(fixture_inputs(at::kFloat)), b->forward(fixture_inputs(at::kFloat))));
  const ModelOutline outline = read_outline(dir);
  EXPECT_EQ(outline.family, "wan");
  EXPECT_EQ(outline.units.size(), 6u);
  EXPECT_EQ(outline.units[3].name, "blocks.1.self_attn");
}

TEST(Wan, StrictLoadingNamesEveryProblem) {
  const std::string dir = temp_dir() + "/m";
  std::system(("mkdir -p " + dir + " && cp " + kWan + "/config.json " + dir).c_str());
  NamedTensors t;
  for (const auto& [name, x] : load_safetensors(kWan + "/diffusion_pytorch_model.safetensors"))
    if (name != "blocks.1.attn2.norm_k.weight") t.emplace_back(name == "proj_out.bias" ? "proj_out.bais" : name, x);
  save_safetensors(dir + "/diffusion_pytorch_model.safetensors", t);
  try {
    load_dit(dir, at::TensorOptions().dtype(at::kFloat));
    ADD_FAILURE() << "loaded a broken checkpoint";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("2 missing: blocks.1.attn2.norm_k.weight, proj_out.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("1 unexpected: proj_out.bais"), std::string::npos) << msg;
  }
  // Configs: diffusers' and the official form give one model; unsupported features are named.
  const nlohmann::json diffusers = {{"num_attention_heads", 12}, {"attention_head_dim", 128}, {"ffn_dim", 8960},
                                    {"num_layers", 30}, {"in_channels", 16}, {"out_channels", 16}, {"text_dim", 4096}};
  const nlohmann::json official = {{"model_type", "t2v"}, {"dim", 1536}, {"num_heads", 12}, {"ffn_dim", 8960},
                                   {"num_layers", 30}, {"in_dim", 16}, {"out_dim", 16}};
  const WanConfig a = parse_wan_config(diffusers, "d"), b = parse_wan_config(official, "o");
  EXPECT_EQ(wan_param_specs(a).size(), 825u);  // T2V-1.3B's 825 tensors
  EXPECT_EQ(wan_param_specs(b).size(), 825u);
  EXPECT_EQ(wan_param_specs(wan_builtin_config("wan2.1-t2v-14b")).size(), 1095u);
  EXPECT_EQ(a.dim, b.dim);
  nlohmann::json i2v = diffusers;
  i2v["image_dim"] = 1280;
  EXPECT_THROW(parse_wan_config(i2v, "i2v"), Error);
}

TEST(Wan, SamplesThroughTheCacheRunnerAndCapsSequenceParallelismAtTheHeadCount) {
  const auto model = random_dit("wan-tiny", 2, at::TensorOptions().dtype(at::kFloat));
  VideoRequest req = ditto::test::tiny_wan_request(3);
  req.negative_y = at::zeros({1, 1, 8, 16});
  req.negative_mask = at::zeros({1, 8}, at::kLong);
  req.negative_mask.narrow(1, 0, 1).fill_(1);
  req.cfg_scale = 5.0;
  SamplerOptions so;
  so.steps = 6;
  so.shift = 5.0;
  RectifiedFlow rf(so, nullptr);
  const at::Tensor reference = sample_video(*model, rf, req, {});
  EXPECT_TRUE(at::isfinite(reference).all().item<bool>());
  for (const std::string name : {"none", "static", "teacache", "fbcache", "adacache"}) {
    const PolicyOptions options = name == "teacache" ? PolicyOptions{{"threshold", "1000"}} : PolicyOptions{};
    auto policy = make_cache_policy(name, options, policy_context(*model, so.steps));
    CacheRunner runner(*model, *policy, nullptr);
    runner.begin_video(rf.timesteps());
    const at::Tensor z = sample_video(*model, rf, req, {}, nullptr, runner.token_forward());
    if (name == "none") {
      EXPECT_LT(rel_err(z, reference), 1e-6);
    }
    EXPECT_TRUE(at::isfinite(z).all().item<bool>()) << name;
    EXPECT_EQ(runner.report()["units_total"], so.steps * 6) << name;
    if (name == "teacache" || name == "static") {
      EXPECT_LT(runner.report()["units_computed"], runner.report()["units_total"]) << name << " skipped nothing";
    }
  }
  // Without a negative caption there is no unconditional branch to guide with (Wan has no learned null).
  VideoRequest plain = req;
  plain.negative_y = plain.negative_mask = at::Tensor();
  EXPECT_THROW(sample_video(*model, rf, plain, {}), Error);
  TokenGrid g;
  g.t = 3, g.h = 2, g.w = 3;
  model->check_layout("ulysses", 2, g);                        // two heads: up to two ranks
  EXPECT_THROW(model->check_layout("ulysses", 3, g), Error);  // more ranks than heads
  EXPECT_EQ(model->layout_for(2, g), "ulysses");
  EXPECT_EQ(model->layout_for(3, g), "kv-gather");             // beyond the head count
  EXPECT_THROW(model->layout_for(19, g), Error);               // more ranks than the 18 tokens
  EXPECT_THROW(model->check_layout("dsp", 2, g), Error);      // full attention has no frame/space split
}

TEST(Wan, ProfileThenBlockCacheAndGuidedRandomCaptionsFromTheCommandLine) {
  // `ditto profile` on a Wan model writes per-unit curves (blocks.N.self_attn, cross_attn, ffn) and a
  // schedule `ditto sample --cache blockcache` follows; a random caption guides with the all-zero
  // unconditional stand-in (Wan has no learned null caption).
  const std::string d = temp_dir();
  const std::string model = "--config wan-tiny --random-weights --frames 17 --height 32 --width 48 ";
  auto r = ditto::test::run_ditto("profile " + model + "--prompts 2 --seeds 1 --steps 6 --deltas 0.5 --quiet --out " + d + "/p");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto curves = nlohmann::json::parse(ditto::test::read_bytes(d + "/p/curves.json"));
  EXPECT_EQ(curves["units"].size(), 6u);
  EXPECT_EQ(curves["units"][0]["name"], "blocks.0.self_attn");
  EXPECT_EQ(curves["units_per_layer"], 3);
  r = ditto::test::run_ditto("sample " + model + "--random-caption 4 --steps 6 --quiet --cache blockcache --schedule " + d +
                             "/p/schedule-delta-0.5.json --out " + d + "/s");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto m = nlohmann::json::parse(ditto::test::read_bytes(d + "/s/metrics.json"));
  const auto schedule = nlohmann::json::parse(ditto::test::read_bytes(d + "/p/schedule-delta-0.5.json"));
  EXPECT_DOUBLE_EQ(m["cache"]["compute_fraction"].get<double>(), schedule["compute_fraction"].get<double>());
  EXPECT_EQ(m["run"]["sampler"], "unipc");
  EXPECT_EQ(m["run"]["cfg_scale"], 5.0);
  // The profile's MagCache ratios drive --cache magcache.
  const auto mag = nlohmann::json::parse(ditto::test::read_bytes(d + "/p/magcache.json"));
  ASSERT_EQ(mag["ratios_cond"].size(), 6u);
  EXPECT_EQ(mag["ratios_cond"][0], 1.0);
  for (int t = 1; t < 6; ++t) EXPECT_GT(mag["ratios_cond"][t].get<double>(), 0.0);
  r = ditto::test::run_ditto("sample " + model + "--random-caption 4 --steps 6 --quiet --cache magcache --cache-opt ratios=" + d +
                             "/p/magcache.json --cache-opt threshold=5 --cache-opt retention=0.3 --out " + d + "/m");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto mm = nlohmann::json::parse(ditto::test::read_bytes(d + "/m/metrics.json"));
  EXPECT_EQ(mm["cache"]["params"]["ratios"], d + "/p/magcache.json");
  EXPECT_LT(mm["cache"]["compute_fraction"].get<double>(), 1.0);
}

namespace {

const std::string kWanA2 = std::string(DITTO_SOURCE_DIR) + "/tests/fixtures/wan_tiny_a2";

// The pipeline runs' shared inputs (make_wan_pipeline_fixtures.py): latents, caption and negative
// caption (zero-padded rows included: Wan attends to them).
VideoRequest pipeline_request(const std::map<std::string, at::Tensor>& f, double cfg) {
  VideoRequest req;
  req.z0 = f.at("latents");
  req.caption_y = f.at("prompt_embeds").unsqueeze(1);
  req.caption_mask = at::ones({1, 8}, at::kLong);
  req.negative_y = f.at("negative_prompt_embeds").unsqueeze(1);
  req.negative_mask = at::ones({1, 8}, at::kLong);
  req.cfg_scale = cfg;
  return req;
}

// UniPC as the pipeline fixtures sample: 6 steps, flow shift 3.
std::unique_ptr<Sampler> fixture_unipc() {
  SamplerOptions so;
  so.name = "unipc", so.steps = 6, so.shift = 3.0;
  return make_sampler(so);
}

// The measured relative error of a run against its reference (printed: the README quotes them), checked.
void expect_run_close(const std::string& what, const at::Tensor& z, const at::Tensor& reference, double tolerance) {
  const double e = rel_err(z, reference);
  std::cout << what << ": relative error " << e << "\n";
  EXPECT_LT(e, tolerance) << what;
}

std::vector<float> as_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

}  // namespace

TEST(WanPipeline, GuidedUniPCAndEulerSamplingMatchDiffusersWanPipeline) {
  const auto f = load_safetensors(kWanA2 + "/pipeline_runs.safetensors");
  const auto model = load_dit(kWan, at::TensorOptions().dtype(at::kFloat));
  auto unipc = fixture_unipc();
  EXPECT_EQ(unipc->timesteps(), as_vector(f.at("wan21_unipc_timesteps")));
  const at::Tensor z = sample_video(*model, *unipc, pipeline_request(f, 5.0), {});
  expect_run_close("wan21 unipc cfg", z, f.at("wan21_unipc"), 2e-6);

  // Euler on diffusers' grid: timesteps unrounded, the low end shifted twice (1000 ... 8.929 at shift 3).
  SamplerOptions so;
  so.name = "euler", so.steps = 5, so.shift = 3.0;
  auto euler = make_sampler(so);
  const std::vector<float> expected = as_vector(f.at("wan21_euler_timesteps"));
  ASSERT_EQ(euler->timesteps().size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_FLOAT_EQ(euler->timesteps()[i], expected[i]) << i;
  const at::Tensor ze = sample_video(*model, *euler, pipeline_request(f, 5.0), {});
  expect_run_close("wan21 euler cfg", ze, f.at("wan21_euler"), 2e-6);
  EXPECT_GT(rel_err(ze, z), 1e-2);  // a different sampler lands elsewhere: the comparison can fail
}

TEST(WanPipeline, TwoExpertsSwitchAtTheBoundaryWithTheirOwnGuidanceAsDiffusers) {
  const auto f = load_safetensors(kWanA2 + "/pipeline_runs.safetensors");
  const ModelOutline outline = read_outline(kWanA2);
  EXPECT_EQ(outline.experts, 2);
  EXPECT_DOUBLE_EQ(outline.expert_boundary, 875.0);
  const auto model = load_dit(kWanA2, at::TensorOptions().dtype(at::kFloat));
  auto sampler = fixture_unipc();
  // 999, 937 | 856, ...: two steps on the high-noise expert, four on the low-noise one.
  EXPECT_EQ(experts_per_step(outline, sampler->timesteps(), NAN), (std::vector<int>{0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(experts_per_step(outline, sampler->timesteps(), 700), (std::vector<int>{0, 0, 0, 0, 1, 1}));
  for (const auto& [run, boundary] : std::vector<std::pair<std::string, double>>{{"wan22_unipc", NAN}, {"wan22_b700", 700}}) {
    VideoRequest req = pipeline_request(f, 4.0);
    req.cfg_scale_2 = 3.0;
    req.experts = experts_per_step(outline, sampler->timesteps(), boundary);
    const at::Tensor z = sample_video(*model, *sampler, req, {});
    expect_run_close(run, z, f.at(run), 2e-6);
  }
  // Each expert alone is not the reference: the switch and the second guidance matter.
  VideoRequest one = pipeline_request(f, 4.0);
  one.cfg_scale_2 = 4.0;
  one.experts = experts_per_step(outline, sampler->timesteps(), NAN);
  EXPECT_GT(rel_err(sample_video(*model, *sampler, one, {}), f.at("wan22_unipc")), 1e-3);

  // Wan 2.2's official layout (high_noise_model/ + low_noise_model/) loads the same two experts.
  const std::string dir = temp_dir();
  ASSERT_EQ(::symlink((kWan).c_str(), (dir + "/high_noise_model").c_str()), 0);
  ASSERT_EQ(::symlink((kWanA2 + "/transformer_2").c_str(), (dir + "/low_noise_model").c_str()), 0);
  EXPECT_EQ(read_outline(dir).experts, 2);
  VideoRequest req = pipeline_request(f, 4.0);
  req.cfg_scale_2 = 3.0;
  req.experts = experts_per_step(read_outline(dir), sampler->timesteps(), NAN);
  const auto official = load_dit(dir, at::TensorOptions().dtype(at::kFloat));
  EXPECT_LT(rel_err(sample_video(*official, *sampler, req, {}), f.at("wan22_unipc")), 2e-6);

  // A one-expert model refuses a second guidance; a pipeline index naming a missing expert is an Error.
  const auto single = load_dit(kWan, at::TensorOptions().dtype(at::kFloat));
  VideoRequest bad = pipeline_request(f, 4.0);
  bad.cfg_scale_2 = 3.0;
  EXPECT_THROW(sample_video(*single, *sampler, bad, {}), Error);
  const std::string broken = temp_dir();
  ASSERT_EQ(::symlink(kWan.c_str(), (broken + "/transformer").c_str()), 0);
  std::ofstream(broken + "/model_index.json") << R"({"_class_name": "WanPipeline", "boundary_ratio": 0.875})";
  try {
    read_outline(broken);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("transformer_2"), std::string::npos) << e.what();
  }
}

TEST(WanPipeline, CacheStartsOverAtTheExpertSwitch) {
  const auto model = random_dit("wan2.2-tiny", 4, at::TensorOptions().dtype(at::kFloat));
  EXPECT_EQ(model->outline().experts, 2);
  VideoRequest req = ditto::test::tiny_wan_request(3);
  add_benchmark_unconditional(req, *model);
  req.cfg_scale = 4.0, req.cfg_scale_2 = 3.0;
  SamplerOptions so;
  so.name = "unipc", so.steps = 6, so.shift = 3.0;
  auto sampler = make_sampler(so);
  req.experts = experts_per_step(model->outline(), sampler->timesteps(), NAN);
  ASSERT_EQ(req.experts, (std::vector<int>{0, 0, 1, 1, 1, 1}));
  // static interval 2 counts each expert's steps from 1: high C C | low C R C C. Over one model's six
  // steps it would be C R C R C C.
  auto policy = make_cache_policy("static", {{"interval", "2"}}, policy_context(*model, so.steps));
  CacheRunner runner(*model, *policy, nullptr);
  runner.begin_video(sampler->timesteps(), req.experts);
  sample_video(*model, *sampler, req, {}, nullptr, runner.token_forward());
  std::vector<std::string> modes;
  std::vector<int> experts;
  const nlohmann::json report = runner.report();
  for (const auto& d : report["decisions"]) {
    modes.push_back(d["mode"]);
    experts.push_back(d["expert"]);
  }
  EXPECT_EQ(modes, (std::vector<std::string>{"compute", "compute", "compute", "reuse", "compute", "compute"}));
  EXPECT_EQ(experts, (std::vector<int>{1, 1, 2, 2, 2, 2}));
  // Block caching's schedules span one model's steps: refused on a model of experts.
  EXPECT_THROW(make_cache_policy("blockcache", {{"schedule", "x.json"}}, policy_context(*model, so.steps)), Error);
  // Without the per-step experts the sampler refuses a model of experts.
  VideoRequest no_experts = req;
  no_experts.experts.clear();
  EXPECT_THROW(sample_video(*model, *sampler, no_experts, {}), Error);
}

TEST(WanPipeline, MatchesTheOfficialWanCode) {
  // tests/fixtures/wan_tiny_a2/official_runs.safetensors: the official Wan2.1 code (wan/modules/model.py
  // WanModel with the same weights under its names, wan/utils/fm_solvers_unipc.py, text2video.py's
  // loop with the caption's real tokens only, cond then uncond; Wan 2.2's rule t >= 875 for two
  // experts with guidance 4 / 3) in float32 on the CPU, attention through SDPA instead of its bf16
  // flash kernel. See the fixture README.
  const auto f = load_safetensors(kWanA2 + "/official_runs.safetensors");
  const auto model = load_dit(kWan, at::TensorOptions().dtype(at::kFloat));
  std::map<std::string, at::Tensor> seen;
  const at::Tensor out = model->forward(fixture_inputs(at::kFloat), [&](const std::string& k, const at::Tensor& t) { seen[k] = t; });
  expect_run_close("official forward", out, f.at("official.out"), 3e-6);
  for (const char* b : {"blocks.0", "blocks.1"}) EXPECT_LT(rel_err(seen.at(b), f.at(std::string("official.") + b)), 3e-6) << b;

  const auto runs = load_safetensors(kWanA2 + "/pipeline_runs.safetensors");
  auto sampler = fixture_unipc();
  EXPECT_EQ(sampler->timesteps(), as_vector(f.at("official.unipc_timesteps")));
  const at::Tensor z = sample_video(*model, *sampler, pipeline_request(runs, 5.0), {});
  expect_run_close("official unipc cfg", z, f.at("official.unipc"), 5e-6);
  const auto experts = load_dit(kWanA2, at::TensorOptions().dtype(at::kFloat));
  VideoRequest req = pipeline_request(runs, 4.0);
  req.cfg_scale_2 = 3.0;
  req.experts = experts_per_step(experts->outline(), sampler->timesteps(), NAN);
  const at::Tensor z2 = sample_video(*experts, *sampler, req, {});
  expect_run_close("official experts", z2, f.at("official.experts"), 5e-6);
}

// set_timestep rewrites a context's timestep conditioning in place (what a captured CUDA graph reads,
// model/cuda_graph.h): the storage stays, the forward equals a fresh context's at the new timestep
// bit for bit, and a probe kept from the last step is not rewritten under its holder (TeaCache keeps
// it). Both families and a model of experts.
TEST(DiTContext, SetTimestepRewritesTheConditioningInPlace) {
  for (const std::string name : {"wan-tiny", "stdit3-tiny", "wan2.2-tiny"}) {
    const auto m = random_dit(name, 5, at::TensorOptions().dtype(at::kFloat));
    const bool wan = m->family() == "wan";
    const VideoRequest req = wan ? ditto::test::tiny_wan_request(1) : ditto::test::tiny_video_request(1, 32, 48);
    DiTInputs a;
    a.x = req.z0.expand({2, -1, -1, -1, -1});
    a.y = at::cat({req.caption_y, req.caption_y.flip(2)}, 0);
    a.mask = req.caption_mask;
    a.fps = at::full({1}, 24.0f);
    a.height = at::full({1}, 32.0f);
    a.width = at::full({1}, 48.0f);
    const at::Tensor tokens = layers::patchify(a.x, m->shape().patch);
    const auto ctx = m->prepare(a), fresh = m->prepare(a);
    m->set_timestep(*ctx, at::full({2}, 900.0f));
    const void* storage = ctx->timestep_embedding().data_ptr();
    const at::Tensor first = m->forward_tokens(tokens, 0, *ctx);
    const at::Tensor probe = m->probe(ProbeSignal::TeaCache, m->embed(tokens, 0, *ctx), *ctx), kept = probe.clone();
    const auto* wc = dynamic_cast<const WanContext*>(ctx.get());
    const void* table = wc ? wc->modulation[1][2].data_ptr() : nullptr;
    m->set_timestep(*ctx, at::full({2}, 300.0f));
    m->set_timestep(*fresh, at::full({2}, 300.0f));
    EXPECT_EQ(ctx->timestep_embedding().data_ptr(), storage) << name;
    if (wc) {
      EXPECT_EQ(wc->modulation[1][2].data_ptr(), table) << name;
    }
    const at::Tensor second = m->forward_tokens(tokens, 0, *ctx);
    EXPECT_TRUE(at::equal(second, m->forward_tokens(tokens, 0, *fresh))) << name;
    EXPECT_GT(rel_err(second, first), 1e-3) << name << ": the timestep did not matter";
    EXPECT_TRUE(at::equal(probe, kept)) << name << ": the kept probe was rewritten";
  }
}

// The plain forward's fused step (unit_apply: the gate and the residual add in one addcmul, the
// modulated LayerNorm in one call) against the caching runner's x + unit_residual, unit by unit, in
// float64; and the modulated LayerNorm against its float64 definition.
TEST(Wan, TheFusedUnitStepIsTheResidualAdd) {
  const auto m = random_dit("wan-tiny", 9, at::TensorOptions().dtype(at::kDouble));
  VideoRequest req = ditto::test::tiny_wan_request(4, 3, 4, 6, at::kDouble);
  DiTInputs a;
  a.x = req.z0.expand({2, -1, -1, -1, -1});
  a.y = at::cat({req.caption_y, -req.caption_y}, 0);
  const auto ctx = m->prepare(a);
  m->set_timestep(*ctx, at::tensor({700.0, 200.0}, at::kDouble));
  at::Tensor x = m->embed(layers::patchify(a.x, m->shape().patch), 0, *ctx);
  for (int u = 0; u < m->unit_count(); ++u) {
    const at::Tensor fused = m->unit_apply(u, x, *ctx, nullptr), plain = x + m->unit_residual(u, x, *ctx, nullptr);
    EXPECT_LT(rel_err(fused, plain), 1e-14) << m->units()[u].name;
    EXPECT_GT(rel_err(fused, x), 1e-3) << m->units()[u].name << " added nothing";
    x = fused;
  }
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor h = at::randn({2, 5, 24}, g, at::kDouble) * 3 + 1, table = at::randn({2, 6, 24}, g, at::kDouble);
  const at::Tensor shift = table.select(1, 0).unsqueeze(1), scale = table.select(1, 1).unsqueeze(1);
  const at::Tensor mean = h.mean(-1, true), var = (h - mean).pow(2).mean(-1, true);
  const at::Tensor want = (h - mean) / at::sqrt(var + 1e-6) * (1 + scale) + shift;
  EXPECT_LT(rel_err(layers::modulated_layer_norm(h, shift, scale, 1e-6, at::kDouble), want), 1e-14);
  EXPECT_LT(rel_err(layers::modulated_layer_norm(h.to(at::kFloat), shift.to(at::kFloat), scale.to(at::kFloat), 1e-6,
                                                 at::kBFloat16).to(at::kDouble), want), 8e-3);
  // 16-bit on the CPU: the reference modules' rounding (LayerNorm's output rounded, then modulated).
  const at::Tensor hb = h.to(at::kBFloat16), sb = shift.to(at::kBFloat16), cb = scale.to(at::kBFloat16);
  EXPECT_TRUE(at::equal(layers::modulated_layer_norm(hb, sb, cb, 1e-6, at::kBFloat16),
                        layers::modulate(layers::layer_norm(hb), sb, cb)));
}
