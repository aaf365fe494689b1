// Wan 2.1 / 2.2's transformer against diffusers' WanTransformer3DModel (tests/fixtures/wan_tiny, made by
// make_wan_fixtures.py): the forward and every block's output in float32 and float64, the official
// WanModel names loading to the same model, strict loading, configs, and sampling through the cache
// runner on one rank.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "cache/cache_runner.h"
#include "dist/video_sampler.h"
#include "model/error.h"
#include "model/family.h"
#include "model/safetensors.h"
#include "model/wan.h"
#include "test_util.h"

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
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  VideoRequest req;
  req.z0 = at::randn({1, 4, 3, 4, 6}, gen, at::kFloat);
  req.caption_y = at::randn({1, 1, 8, 16}, gen, at::kFloat);
  req.caption_mask = at::ones({1, 8}, at::kLong);
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
}
