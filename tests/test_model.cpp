// The whole STDiT3: parameter inventory, checkpoints written by the test and strict-loading errors,
// masking and batching semantics, and parity with the official Open-Sora module's saved outputs.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "model/error.h"
#include "model/layers.h"
#include "model/safetensors.h"
#include "model/stdit3.h"
#include "model/wan.h"
#include "test_util.h"

using namespace ditto;
using ditto::test::fixture;
using ditto::test::rel_err;
using ditto::test::temp_dir;

namespace {

const at::TensorOptions kF32 = at::TensorOptions().dtype(at::kFloat);

ForwardArgs tiny_inputs(const STDiT3Config& c, int64_t B, uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  ForwardArgs a;
  a.x = at::randn({B, c.in_channels, 3, 6, 9}, g, kF32);
  a.timestep = at::rand({B}, g, kF32) * 1000;
  a.y = at::randn({B, 1, c.model_max_length, c.caption_channels}, g, kF32);
  a.mask = at::ones({B, c.model_max_length}, at::kLong);
  a.fps = at::full({B}, 24.0f);
  a.height = at::full({B}, 48.0f);
  a.width = at::full({B}, 72.0f);
  return a;
}

// Batch element i of a, every batched input sliced (height and width are per-forward scalars).
ForwardArgs batch_element(const ForwardArgs& a, int64_t i) {
  ForwardArgs s = a;
  s.x = a.x.narrow(0, i, 1);
  s.timestep = a.timestep.narrow(0, i, 1);
  s.y = a.y.narrow(0, i, 1);
  s.mask = a.mask.narrow(0, i, 1);
  s.fps = a.fps.narrow(0, i, 1);
  if (a.frame_index.defined() && a.frame_index.dim() == 2) s.frame_index = a.frame_index[i];
  return s;
}

std::string expect_load_error(const std::string& dir, const STDiT3Config& c) {
  try {
    load_checkpoint(dir, c, kF32);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "loading " << dir << " did not fail";
  return "";
}

}  // namespace

TEST(Model, XlInventoryMatchesTheOfficialCheckpoint) {
  // 973 tensors and 1,208,872,772 parameters: the published STDiT3-XL/2 state dict.
  const auto specs = stdit3_param_specs(builtin_config("stdit3-xl"));
  EXPECT_EQ(specs.size(), 973u);
  int64_t n = 0;
  for (const auto& s : specs) n += c10::multiply_integers(s.shape);
  EXPECT_EQ(n, 1208872772);
}

TEST(Model, SaveLoadRoundTripIsExact) {
  const std::string dir = temp_dir() + "/m";
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 a = STDiT3::random(c, 11, kF32);
  a.save_pretrained(dir);
  STDiT3 b = STDiT3::from_pretrained(dir, kF32);
  ForwardArgs in = tiny_inputs(c, 2, 3);
  EXPECT_TRUE(at::equal(a.forward(in), b.forward(in)));
  // The written config.json uses the official field names.
  nlohmann::json j = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
  EXPECT_EQ(j["model_type"], "STDiT3");
  EXPECT_EQ(j["hidden_size"], 64);
  EXPECT_EQ(j["patch_size"], nlohmann::json({1, 2, 2}));
}

TEST(Model, StrictLoadingNamesEveryProblem) {
  const std::string root = temp_dir();
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 1, kF32);
  NamedTensors all;
  for (const auto& s : stdit3_param_specs(c)) all.emplace_back(s.name, m.weights().at(s.name));

  auto write = [&](const std::string& name, NamedTensors t) {
    const std::string dir = root + "/" + name;
    std::system(("mkdir -p " + dir).c_str());
    save_safetensors(dir + "/model.safetensors", t);
    return dir;
  };
  NamedTensors t = all;
  t.erase(t.begin() + 5);
  std::string msg = expect_load_error(write("missing", t), c);
  EXPECT_NE(msg.find("1 missing: " + all[5].first), std::string::npos) << msg;

  t = all;
  t.emplace_back("extra.weight", at::ones({2}));
  msg = expect_load_error(write("unexpected", t), c);
  EXPECT_NE(msg.find("1 unexpected: extra.weight"), std::string::npos) << msg;

  t = all;
  t[3].second = at::ones({7, 7});
  msg = expect_load_error(write("shape", t), c);
  EXPECT_NE(msg.find(t[3].first + " [7,7] (expected"), std::string::npos) << msg;

  t = all;
  t[2].second = t[2].second.to(at::kLong);
  msg = expect_load_error(write("dtype", t), c);
  EXPECT_NE(msg.find("non-float dtype: " + t[2].first + " I64"), std::string::npos) << msg;

  // Several problems at once are all reported.
  t = all;
  t.erase(t.begin());
  t.emplace_back("bogus", at::ones({1}));
  msg = expect_load_error(write("several", t), c);
  EXPECT_NE(msg.find("missing"), std::string::npos);
  EXPECT_NE(msg.find("unexpected: bogus"), std::string::npos);

  // A checkpoint for another config: every block-1 tensor is unexpected for depth 1.
  STDiT3Config shallow = c;
  shallow.depth = 1;
  msg = expect_load_error(write("depth", all), shallow);
  EXPECT_NE(msg.find("unexpected"), std::string::npos) << msg;

  // Truncated file.
  const std::string tdir = write("truncated", all);
  const std::string bytes = ditto::test::read_bytes(tdir + "/model.safetensors");
  ditto::test::write_bytes(tdir + "/model.safetensors", bytes.substr(0, bytes.size() - 100));
  msg = expect_load_error(tdir, c);
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;

  // No checkpoint at all.
  std::system(("mkdir -p " + root + "/none").c_str());
  msg = expect_load_error(root + "/none", c);
  EXPECT_NE(msg.find("neither model.safetensors"), std::string::npos) << msg;
}

TEST(Model, LoadsShardsAndHalfPrecisionCheckpoints) {
  const std::string dir = temp_dir();
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 2, kF32);
  NamedTensors a, b;
  nlohmann::json index;
  const auto specs = stdit3_param_specs(c);
  for (size_t i = 0; i < specs.size(); ++i) {
    const bool first = i < specs.size() / 2;
    (first ? a : b).emplace_back(specs[i].name, m.weights().at(specs[i].name).to(at::kBFloat16));
    index["weight_map"][specs[i].name] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  save_safetensors(dir + "/model-00001-of-00002.safetensors", a);
  save_safetensors(dir + "/model-00002-of-00002.safetensors", b);
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  auto w = load_checkpoint(dir, c, kF32);
  EXPECT_EQ(w.size(), specs.size());
  for (const auto& s : specs) {
    EXPECT_EQ(w.at(s.name).scalar_type(), at::kFloat);
    EXPECT_TRUE(at::equal(w.at(s.name), m.weights().at(s.name).to(at::kBFloat16).to(at::kFloat))) << s.name;
  }
  // An index that points at the wrong shard is an error naming the tensor.
  index["weight_map"][specs[0].name] = "model-00002-of-00002.safetensors";
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump();
  try {
    load_checkpoint(dir, c, kF32);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(specs[0].name), std::string::npos) << e.what();
  }
}

TEST(Model, MaskedTokensAreExactlyDroppedTokens) {
  // The reference packs the valid tokens with masked_select: masking token k equals removing it.
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 4, at::TensorOptions().dtype(at::kDouble));
  ForwardArgs a = tiny_inputs(c, 1, 5);
  a.x = a.x.to(at::kDouble);
  a.mask = at::tensor({1, 1, 0, 1, 1, 0, 1, 0}, at::kLong).unsqueeze(0);
  at::Tensor masked = m.forward(a);
  ForwardArgs b = a;
  at::Tensor keep = at::tensor({0, 1, 3, 4, 6}, at::kLong);
  b.y = a.y.index_select(2, keep);
  b.mask = at::Tensor();
  EXPECT_LT(rel_err(masked, m.forward(b)), 1e-12);
}

TEST(Model, BatchElementsAreIndependent) {
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 6, kF32);
  ForwardArgs a = tiny_inputs(c, 2, 7);
  a.mask[1].narrow(0, 5, 3).fill_(0);
  at::Tensor both = m.forward(a);
  for (int64_t i = 0; i < 2; ++i)
    EXPECT_LT(rel_err(m.forward(batch_element(a, i)), both.narrow(0, i, 1)), 1e-5) << "batch element " << i;
}

TEST(Model, Float32AgreesWithFloat64) {
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m32 = STDiT3::random(c, 8, kF32);
  std::map<std::string, at::Tensor> w64;
  for (const auto& [k, v] : m32.weights()) w64[k] = v.to(at::kDouble);
  STDiT3 m64(c, w64);
  ForwardArgs a = tiny_inputs(c, 2, 9);
  at::Tensor o64 = m64.forward(a);
  EXPECT_EQ(o64.scalar_type(), at::kDouble);
  EXPECT_LT(rel_err(m32.forward(a), o64), 1e-5);
}

TEST(Model, ForwardInputErrorsNameTheInput) {
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::random(c, 1, kF32);
  ForwardArgs a = tiny_inputs(c, 1, 1);
  ForwardArgs bad = a;
  bad.fps = at::Tensor();
  EXPECT_THROW(
      try { m.forward(bad); } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'fps'"), std::string::npos);
        throw;
      },
      Error);
  bad = a;
  bad.y = at::randn({1, 1, 8, 33});
  EXPECT_THROW(m.forward(bad), Error);
  bad = a;
  bad.mask = at::zeros({1, 8}, at::kLong);
  EXPECT_THROW(m.forward(bad), Error);
}

TEST(Model, TrainingInitFollowsOpenSora) {
  const STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 m = STDiT3::training_init(c, 5, kF32);
  const auto w = m.weights();
  auto zero = [&](const std::string& n) { return w.at(n).abs().max().item<double>() == 0; };
  // Output layers start at zero, so the model's first prediction is exactly zero.
  for (const char* n : {"final_layer.linear.weight", "final_layer.linear.bias", "spatial_blocks.0.cross_attn.proj.weight",
                        "temporal_blocks.0.cross_attn.proj.bias", "temporal_blocks.0.attn.proj.weight",
                        "temporal_blocks.0.mlp.fc2.weight", "fps_embedder.mlp.2.weight", "spatial_blocks.0.attn.proj.bias"})
    EXPECT_TRUE(zero(n)) << n;
  EXPECT_FALSE(zero("spatial_blocks.0.attn.proj.weight"));
  EXPECT_FALSE(zero("spatial_blocks.0.mlp.fc2.weight"));
  // Xavier uniform: |w| <= sqrt(6 / (fan_in + fan_out)); the small MLPs N(0, 0.02).
  const at::Tensor qkv = w.at("spatial_blocks.0.attn.qkv.weight");
  const double bound = std::sqrt(6.0 / (qkv.size(0) + qkv.size(1)));
  EXPECT_LE(qkv.abs().max().item<double>(), bound);
  EXPECT_GT(qkv.abs().max().item<double>(), 0.9 * bound);
  EXPECT_NEAR(w.at("t_block.1.weight").std().item<double>(), 0.02, 0.002);
  EXPECT_EQ(m.forward(tiny_inputs(c, 2, 1)).abs().max().item<double>(), 0.0);
}

TEST(Model, ConfigErrors) {
  const std::string dir = temp_dir();
  auto err = [&](const std::string& json) -> std::string {
    ditto::test::write_bytes(dir + "/config.json", json);
    try {
      load_config(dir + "/config.json");
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(err("{not json").find("malformed JSON"), std::string::npos);
  EXPECT_NE(err(R"({"model_type":"Latte"})").find("is not STDiT3"), std::string::npos);
  EXPECT_NE(err(R"({"hidden_size":100,"num_heads":16})").find("not divisible by num_heads"), std::string::npos);
  EXPECT_NE(err(R"({"hidden_size":"big"})").find("hidden_size"), std::string::npos);
  EXPECT_NE(err(R"({"skip_y_embedder":true})").find("not supported"), std::string::npos);
  EXPECT_NE(err(R"({"temporal_pos_embed":"learned"})").find("temporal_pos_embed"), std::string::npos);
  EXPECT_EQ(err(R"({"model_type":"STDiT3","hidden_size":64,"num_heads":4,"depth":2})"), "");
  // Sizes are integers in range, never truncated or wrapped (64.7 is not 64, 2^32 + 64 is not 64).
  EXPECT_NE(err(R"({"hidden_size":64.7})").find("field 'hidden_size': must be an integer, got 64.7"), std::string::npos);
  EXPECT_NE(err(R"({"hidden_size":4294967360})").find("must be an integer in 0 .. 16777216, got 4294967360"), std::string::npos);
  EXPECT_NE(err(R"({"depth":1e9})").find("field 'depth': must be an integer"), std::string::npos);
  EXPECT_NE(err(R"({"depth":1000000000})").find("field 'depth'"), std::string::npos);
  EXPECT_NE(err(R"({"patch_size":[1,2.5,2]})").find("field 'patch_size'"), std::string::npos);
  EXPECT_NE(err(R"({"qk_norm":1})").find("field 'qk_norm': must be true or false"), std::string::npos);
  // The same rules for Wan's configs.
  try {
    parse_wan_config(nlohmann::json::parse(R"({"num_attention_heads":2,"attention_head_dim":12,"num_layers":1e9})"), "w");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("field 'num_layers': must be an integer"), std::string::npos) << e.what();
  }
}

TEST(Model, TemporalPositionEmbeddingIsTheFrameSinCos) {
  // The demo model's temporal embedding: a model with it embeds tokens exactly as the same weights
  // without it, plus sin/cos(frame * 10000^(-k / (C/2))) on every token of the frame (float64,
  // written out here from the formula).
  STDiT3Config c = builtin_config("stdit3-tiny");
  STDiT3 stock = STDiT3::random(c, 2, at::TensorOptions().dtype(at::kDouble));
  c.temporal_pos_embed = true;
  STDiT3 m(c, stock.weights());
  ForwardArgs a = tiny_inputs(c, 2, 3);
  a.x = a.x.to(at::kDouble);
  const at::Tensor tokens = layers::patchify(a.x, c.patch_size);
  const at::Tensor diff = m.embed_tokens(tokens, 0, m.condition(a)) - stock.embed_tokens(tokens, 0, stock.condition(a));
  const int C = c.hidden_size, T = static_cast<int>(diff.size(1));
  at::Tensor expected = at::zeros({T, C}, at::kDouble);
  for (int f = 0; f < T; ++f)
    for (int k = 0; k < C / 2; ++k) {
      const double angle = f * std::pow(10000.0, -k / (C / 2.0));
      expected[f][k] = std::sin(angle);
      expected[f][C / 2 + k] = std::cos(angle);
    }
  EXPECT_LT((diff - expected.view({1, T, 1, C})).abs().max().item<double>(), 1e-12);
  // The config field survives a save and a load; the stock config writes "none".
  const std::string dir = temp_dir();
  m.save_pretrained(dir);
  EXPECT_TRUE(load_config(dir + "/config.json").temporal_pos_embed);
  stock.save_pretrained(dir);
  EXPECT_FALSE(load_config(dir + "/config.json").temporal_pos_embed);
}

namespace {
// The 1D sin-cos embedding of frame f, width C, in float64 (sin half, then cos half).
at::Tensor frame_sincos(int64_t f, int C) {
  at::Tensor e = at::zeros({C}, at::kDouble);
  for (int k = 0; k < C / 2; ++k) {
    const double angle = f * std::pow(10000.0, -k / (C / 2.0));
    e[k] = std::sin(angle);
    e[C / 2 + k] = std::cos(angle);
  }
  return e;
}
// frame_block W [6C, C] and b [6C]: zero (the training initialisation), or random from g.
void set_frame_block(std::map<std::string, at::Tensor>& w, int C, at::Generator* g = nullptr) {
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  w["frame_block.weight"] = g ? at::randn({6 * C, C}, *g, f64) * 0.1 : at::zeros({6 * C, C}, f64);
  w["frame_block.bias"] = g ? at::randn({6 * C}, *g, f64) * 0.1 : at::zeros({6 * C}, f64);
}

// Saves m, loads it back (float64), expects the same prediction for `a`; returns the config read back.
STDiT3Config saved_and_loaded(const STDiT3& m, const ForwardArgs& a) {
  const std::string dir = temp_dir();
  m.save_pretrained(dir);
  EXPECT_TRUE(at::equal(STDiT3::from_pretrained(dir, at::TensorOptions().dtype(at::kDouble)).forward(a), m.forward(a)));
  return load_config(dir + "/config.json");
}

// LayerNorm without affine over the last dimension (eps 1e-6), as the blocks' modulated input uses.
at::Tensor plain_layer_norm(const at::Tensor& x) {
  const at::Tensor mean = x.mean(-1, true), var = (x - mean).pow(2).mean(-1, true);
  return (x - mean) / (var + 1e-6).sqrt();
}
}  // namespace

TEST(Model, FrameModulationAddsALinearMapOfTheFrameSinCosToEveryBlocksAdaLN) {
  // frame_modulation: block modulation = scale_shift_table + t_mlp + (W e_f + b) for the tokens of
  // frame f, e_f the frame's sin-cos (as the temporal embedding). At initialisation (W, b zero) the
  // model predicts exactly what the same weights without it do.
  STDiT3Config c = builtin_config("stdit3-tiny");
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  STDiT3 stock = STDiT3::random(c, 2, f64);
  STDiT3Config fc = c;
  fc.frame_modulation = true;
  std::map<std::string, at::Tensor> w = stock.weights();
  const int C = c.hidden_size;
  set_frame_block(w, C);
  ForwardArgs a = tiny_inputs(c, 2, 3);
  a.x = a.x.to(at::kDouble);
  EXPECT_TRUE(at::equal(STDiT3(fc, w).forward(a), stock.forward(a)));
  // Random W and b: the modulated input of a block differs from the stock one by LN(x) * dscale_f + dshift_f,
  // with (dshift_f, dscale_f) the first two C-chunks of W e_f + b, written out here in float64.
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(11);
  set_frame_block(w, C, &g);
  STDiT3 m(fc, w);
  const Conditioning cm = m.condition(a), cs = stock.condition(a);
  const at::Tensor x = at::randn({2, cm.grid.t, cm.grid.s(), C}, g, f64);
  for (BlockKind kind : {BlockKind::Spatial, BlockKind::Temporal}) {
    const at::Tensor diff = m.modulated_input(kind, 1, x, cm) - stock.modulated_input(kind, 1, x, cs);
    const at::Tensor ln = plain_layer_norm(x);
    for (int64_t f = 0; f < cm.grid.t; ++f) {
      const at::Tensor terms = at::mv(w["frame_block.weight"], frame_sincos(f, C)) + w["frame_block.bias"];
      const at::Tensor expected = ln.select(1, f) * terms.narrow(0, C, C) + terms.narrow(0, 0, C);
      EXPECT_LT((diff.select(1, f) - expected).abs().max().item<double>(), 1e-10) << "frame " << f;
    }
  }
  // The frames are told apart: the same input in every frame comes out different per frame.
  ForwardArgs same = a;
  same.x = a.x.narrow(2, 0, 1).expand_as(a.x).contiguous();
  const at::Tensor out = m.forward(same);
  EXPECT_GT((out.select(2, 0) - out.select(2, 2)).abs().max().item<double>(), 1e-3);
  // The built-in experimental config has it, the shipped demo config not; it survives save and load.
  EXPECT_TRUE(builtin_config("ditto-demo-fm").frame_modulation);
  EXPECT_FALSE(builtin_config("ditto-demo").frame_modulation);
  EXPECT_TRUE(saved_and_loaded(m, a).frame_modulation);
}

TEST(Model, FrameCaptionModulationReadsTheFrameTheTimestepAndTheMeanCaptionToken) {
  // frame_caption_modulation: the per-frame term is W SiLU(t + e_f + ybar) + b, with t the timestep
  // (+ fps) embedding and ybar the mean of the projected caption tokens under the mask. Zero W, b: the
  // stock model's prediction, exactly.
  STDiT3Config c = builtin_config("stdit3-tiny");
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  STDiT3 stock = STDiT3::random(c, 4, f64);
  STDiT3Config fc = c;
  fc.frame_modulation = fc.frame_caption_modulation = true;
  std::map<std::string, at::Tensor> w = stock.weights();
  const int C = c.hidden_size;
  set_frame_block(w, C);
  ForwardArgs a = tiny_inputs(c, 2, 5);
  a.x = a.x.to(at::kDouble);
  a.y = a.y.to(at::kDouble);
  // Not a prefix in row 0 (tokens 0, 2, 3 valid), the first five in row 1.
  a.mask = at::tensor({1, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0}, at::kLong).view({2, 8});
  EXPECT_TRUE(at::equal(STDiT3(fc, w).forward(a), stock.forward(a)));
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(12);
  set_frame_block(w, C, &g);
  STDiT3 m(fc, w);
  const Conditioning cm = m.condition(a), cs = stock.condition(a);
  const at::Tensor x = at::randn({2, cm.grid.t, cm.grid.s(), C}, g, f64);
  const at::Tensor ln = plain_layer_norm(x);
  for (BlockKind kind : {BlockKind::Spatial, BlockKind::Temporal}) {
    const at::Tensor diff = m.modulated_input(kind, 0, x, cm) - stock.modulated_input(kind, 0, x, cs);
    for (int64_t b = 0; b < 2; ++b) {
      // ybar written out: the caption projection (fc1, tanh-GELU, fc2) of the valid tokens, averaged.
      at::Tensor sum = at::zeros({C}, f64);
      int valid = 0;
      for (int64_t l = 0; l < 8; ++l) {
        if (a.mask[b][l].item<int64_t>() == 0) continue;
        const at::Tensor h = at::gelu(at::mv(w["y_embedder.y_proj.fc1.weight"], a.y[b][0][l]) + w["y_embedder.y_proj.fc1.bias"], "tanh");
        sum += at::mv(w["y_embedder.y_proj.fc2.weight"], h) + w["y_embedder.y_proj.fc2.bias"];
        ++valid;
      }
      for (int64_t f = 0; f < cm.grid.t; ++f) {
        const at::Tensor u = cs.t[b] + frame_sincos(f, C) + sum / valid;
        const at::Tensor terms = at::mv(w["frame_block.weight"], u * at::sigmoid(u)) + w["frame_block.bias"];
        const at::Tensor expected = ln[b][f] * terms.narrow(0, C, C) + terms.narrow(0, 0, C);
        EXPECT_LT((diff[b][f] - expected).abs().max().item<double>(), 1e-10) << "row " << b << " frame " << f;
      }
    }
  }
  // The caption changes the per-frame terms: another caption, another modulation.
  ForwardArgs other = a;
  other.y = a.y.flip({2});
  EXPECT_GT((m.condition(other).frame_mlp - cm.frame_mlp).abs().max().item<double>(), 1e-3);
  // Config: needs frame_modulation; the built-in experimental config has it; save and load keep it.
  STDiT3Config bad = c;
  bad.frame_caption_modulation = true;
  EXPECT_THROW(bad.validate(), Error);
  EXPECT_TRUE(builtin_config("ditto-demo-fcm").frame_caption_modulation);
  EXPECT_TRUE(builtin_config("ditto-demo-fcm").frame_modulation);
  EXPECT_FALSE(builtin_config("ditto-demo-fm").frame_caption_modulation);
  EXPECT_TRUE(saved_and_loaded(m, a).frame_caption_modulation);
}

TEST(Model, FrameIndexPlacesSingleFramesInTheClip) {
  // An image step's batch of single frames, each with the index of the frame it was cut from,
  // equals forwarding each frame alone with its index; the default index is 0..T'-1, and the
  // index changes the output (the embedding reaches it).
  STDiT3Config c = builtin_config("stdit3-tiny");
  c.temporal_pos_embed = true;
  STDiT3 m = STDiT3::random(c, 4, kF32);
  ForwardArgs a = tiny_inputs(c, 2, 5);
  a.x = a.x.narrow(2, 0, 1).contiguous();
  a.frame_index = at::tensor({3, 5}, at::kLong).view({2, 1});
  const at::Tensor both = m.forward(a);
  for (int64_t i = 0; i < 2; ++i)
    EXPECT_LT(rel_err(m.forward(batch_element(a, i)), both.narrow(0, i, 1)), 1e-5) << "batch element " << i;
  ForwardArgs other = a;
  other.frame_index = at::tensor({0, 0}, at::kLong).view({2, 1});
  EXPECT_GT(rel_err(m.forward(other), both), 1e-2);
  ForwardArgs video = tiny_inputs(c, 1, 6);
  const at::Tensor by_default = m.forward(video);
  video.frame_index = at::arange(3, at::kLong);
  EXPECT_EQ(rel_err(m.forward(video), by_default), 0.0);
  // Wrong shapes, and an index for a model without the embedding, are errors.
  video.frame_index = at::arange(4, at::kLong);
  EXPECT_THROW(m.forward(video), Error);
  c.temporal_pos_embed = false;
  video.frame_index = at::arange(3, at::kLong);
  EXPECT_THROW(STDiT3(c, m.weights()).forward(video), Error);
}

// --- Parity with the official Open-Sora 1.2 module (fixtures: tests/fixtures/opensora_stdit3_tiny) ---

TEST(OpenSoraParity, ForwardAndEveryBlockMatchTheReference) {
  STDiT3 m = STDiT3::from_pretrained(fixture(""), kF32);
  auto in = load_safetensors(fixture("forward_inputs.safetensors"));
  auto ref = load_safetensors(fixture("forward_out.safetensors"));
  ForwardArgs a{in.at("x"), in.at("timestep"), in.at("y"), in.at("mask"), in.at("fps"), in.at("height"), in.at("width"), {}};
  std::map<std::string, at::Tensor> seen;
  at::Tensor out = m.forward(a, [&](const std::string& n, const at::Tensor& t) { seen[n] = t.clone(); });
  EXPECT_LT(rel_err(out, ref.at("out")), 1e-5);
  for (const auto& [name, t] : ref) {
    if (name == "out") continue;
    ASSERT_TRUE(seen.count(name)) << name;
    EXPECT_LT(rel_err(seen.at(name), t), 1e-5) << name;
  }
}
