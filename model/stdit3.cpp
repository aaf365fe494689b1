// STDiT3 parameters, checkpoint loading and forward pass (Open-Sora 1.2 numerics; see stdit3.h).
#include "model/stdit3.h"

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "model/checkpoint.h"
#include "model/error.h"
#include "model/host_sync.h"
#include "model/layers.h"

namespace ditto {

namespace {

const char* kind_prefix(BlockKind k) { return k == BlockKind::Spatial ? "spatial_blocks." : "temporal_blocks."; }

// Repeats a [k, ...] tensor along dim 0 to batch b (k must divide b), as the reference's repeat does.
at::Tensor repeat_to_batch(const at::Tensor& t, int64_t b, const char* what) {
  if (t.size(0) == b) return t;
  if (t.size(0) == 0 || b % t.size(0) != 0)
    fail("forward: ", what, " has batch ", t.size(0), " which does not divide the batch ", b);
  std::vector<int64_t> reps(t.dim(), 1);
  reps[0] = b / t.size(0);
  return t.repeat(reps);
}

}  // namespace

std::vector<ParamSpec> stdit3_param_specs(const STDiT3Config& c) {
  const int64_t C = c.hidden_size, D = c.head_dim(), M = c.mlp_hidden(), F = 256;
  std::vector<ParamSpec> s;
  auto add = [&](std::string name, std::vector<int64_t> shape) { s.push_back({std::move(name), std::move(shape)}); };
  add("rope.freqs", {D / 2});
  add("x_embedder.proj.weight", {C, c.in_channels, c.patch_size[0], c.patch_size[1], c.patch_size[2]});
  add("x_embedder.proj.bias", {C});
  for (const char* e : {"t_embedder", "fps_embedder"}) {
    add(std::string(e) + ".mlp.0.weight", {C, F});
    add(std::string(e) + ".mlp.0.bias", {C});
    add(std::string(e) + ".mlp.2.weight", {C, C});
    add(std::string(e) + ".mlp.2.bias", {C});
  }
  add("t_block.1.weight", {6 * C, C});
  add("t_block.1.bias", {6 * C});
  if (c.frame_modulation) {
    add("frame_block.weight", {6 * C, C});
    add("frame_block.bias", {6 * C});
  }
  add("y_embedder.y_proj.fc1.weight", {C, c.caption_channels});
  add("y_embedder.y_proj.fc1.bias", {C});
  add("y_embedder.y_proj.fc2.weight", {C, C});
  add("y_embedder.y_proj.fc2.bias", {C});
  add("y_embedder.y_embedding", {c.model_max_length, c.caption_channels});
  for (BlockKind kind : {BlockKind::Spatial, BlockKind::Temporal}) {
    for (int i = 0; i < c.depth; ++i) {
      const std::string p = kind_prefix(kind) + std::to_string(i) + ".";
      add(p + "scale_shift_table", {6, C});
      add(p + "attn.qkv.weight", {3 * C, C});
      add(p + "attn.qkv.bias", {3 * C});
      if (c.qk_norm) {
        add(p + "attn.q_norm.weight", {D});
        add(p + "attn.k_norm.weight", {D});
      }
      add(p + "attn.proj.weight", {C, C});
      add(p + "attn.proj.bias", {C});
      add(p + "cross_attn.q_linear.weight", {C, C});
      add(p + "cross_attn.q_linear.bias", {C});
      add(p + "cross_attn.kv_linear.weight", {2 * C, C});
      add(p + "cross_attn.kv_linear.bias", {2 * C});
      add(p + "cross_attn.proj.weight", {C, C});
      add(p + "cross_attn.proj.bias", {C});
      add(p + "mlp.fc1.weight", {M, C});
      add(p + "mlp.fc1.bias", {M});
      add(p + "mlp.fc2.weight", {C, M});
      add(p + "mlp.fc2.bias", {C});
    }
  }
  add("final_layer.scale_shift_table", {2, C});
  add("final_layer.linear.weight", {c.patch_volume() * c.out_channels(), C});
  add("final_layer.linear.bias", {c.patch_volume() * c.out_channels()});
  return s;
}

std::map<std::string, at::Tensor> load_checkpoint(const std::string& dir, const STDiT3Config& config,
                                                  const at::TensorOptions& options) {
  std::ostringstream described;
  described << "hidden_size=" << config.hidden_size << ", depth=" << config.depth << ", num_heads=" << config.num_heads
            << ", in_channels=" << config.in_channels << ", caption_channels=" << config.caption_channels;
  return load_strict(Checkpoint::open(dir, {"model"}), stdit3_param_specs(config), options, described.str());
}

STDiT3::STDiT3(STDiT3Config config, std::map<std::string, at::Tensor> weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  config_.validate();
  check_weights(stdit3_param_specs(config_), weights_, "STDiT3");
  options_ = weights_.at("x_embedder.proj.weight").options();
  outline_ = stdit3_outline(config_);
  for (BlockKind kind : {BlockKind::Spatial, BlockKind::Temporal}) {
    auto& vec = kind == BlockKind::Spatial ? spatial_ : temporal_;
    for (int i = 0; i < config_.depth; ++i) {
      const std::string p = kind_prefix(kind) + std::to_string(i) + ".";
      BlockWeights b;
      b.sst = w(p + "scale_shift_table");
      b.qkv_w = w(p + "attn.qkv.weight");
      b.qkv_b = w(p + "attn.qkv.bias");
      if (config_.qk_norm) {
        b.q_norm = w(p + "attn.q_norm.weight");
        b.k_norm = w(p + "attn.k_norm.weight");
      }
      b.proj_w = w(p + "attn.proj.weight");
      b.proj_b = w(p + "attn.proj.bias");
      b.cq_w = w(p + "cross_attn.q_linear.weight");
      b.cq_b = w(p + "cross_attn.q_linear.bias");
      b.ckv_w = w(p + "cross_attn.kv_linear.weight");
      b.ckv_b = w(p + "cross_attn.kv_linear.bias");
      b.cproj_w = w(p + "cross_attn.proj.weight");
      b.cproj_b = w(p + "cross_attn.proj.bias");
      b.fc1_w = w(p + "mlp.fc1.weight");
      b.fc1_b = w(p + "mlp.fc1.bias");
      b.fc2_w = w(p + "mlp.fc2.weight");
      b.fc2_b = w(p + "mlp.fc2.bias");
      vec.push_back(std::move(b));
    }
  }
}

const at::Tensor& STDiT3::w(const std::string& name) const { return weight_named(weights_, name, "STDiT3"); }

const STDiT3::BlockWeights& STDiT3::block_weights(BlockKind kind, int index) const {
  const auto& v = kind == BlockKind::Spatial ? spatial_ : temporal_;
  if (index < 0 || index >= static_cast<int>(v.size())) fail("STDiT3: block index ", index, " out of range");
  return v[index];
}

STDiT3 STDiT3::from_pretrained(const std::string& dir, const at::TensorOptions& options) {
  STDiT3Config config = load_config(dir + "/config.json");
  return STDiT3(config, load_checkpoint(dir, config, options));
}

STDiT3 STDiT3::random(const STDiT3Config& config, uint64_t seed, const at::TensorOptions& options) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  std::map<std::string, at::Tensor> weights;
  const double C = config.hidden_size;
  for (const auto& spec : stdit3_param_specs(config)) {
    const std::string& n = spec.name;
    auto ends_with = [&](const char* s) {
      const std::string suf(s);
      return n.size() >= suf.size() && n.compare(n.size() - suf.size(), suf.size(), suf) == 0;
    };
    at::Tensor t;
    if (n == "rope.freqs") {
      const double d = config.head_dim();
      t = 1.0 / at::pow(10000.0, at::arange(0, config.head_dim(), 2, f32) / d);
    } else if (ends_with("norm.weight")) {
      t = 1.0 + 0.1 * at::randn(spec.shape, gen, f32);
    } else if (ends_with("scale_shift_table")) {
      t = at::randn(spec.shape, gen, f32) / std::sqrt(C);
    } else if (n == "y_embedder.y_embedding") {
      t = at::randn(spec.shape, gen, f32) / std::sqrt(static_cast<double>(config.caption_channels));
    } else if (ends_with(".bias")) {
      t = 0.02 * at::randn(spec.shape, gen, f32);
    } else {  // weights: unit-variance outputs for unit-variance inputs
      int64_t fan_in = 1;
      for (size_t i = 1; i < spec.shape.size(); ++i) fan_in *= spec.shape[i];
      t = at::randn(spec.shape, gen, f32) / std::sqrt(static_cast<double>(fan_in));
    }
    weights[n] = t.to(options);
  }
  return STDiT3(config, std::move(weights));
}

STDiT3 STDiT3::training_init(const STDiT3Config& config, uint64_t seed, const at::TensorOptions& options) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  const STDiT3 base = random(config, seed, f32);  // buffers and tables as random() makes them
  std::map<std::string, at::Tensor> weights;
  auto is = [](const std::string& n, const char* prefix, const char* suffix) {
    const std::string p(prefix), s(suffix);
    return n.rfind(p, 0) == 0 && n.size() >= p.size() + s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
  };
  for (const auto& spec : stdit3_param_specs(config)) {
    const std::string& n = spec.name;
    at::Tensor t;
    const bool zero = n.rfind("final_layer.linear.", 0) == 0 || n.rfind("fps_embedder.mlp.2.", 0) == 0 ||
                      n.rfind("frame_block.", 0) == 0 ||  // the per-frame terms start at zero: no change at first
                      n.find(".cross_attn.proj.") != std::string::npos ||
                      is(n, "temporal_blocks.", ".attn.proj.weight") || is(n, "temporal_blocks.", ".mlp.fc2.weight");
    if (n == "rope.freqs" || n.find("scale_shift_table") != std::string::npos || n == "y_embedder.y_embedding") {
      t = base.w(n).clone();
    } else if (n.size() > 12 && n.compare(n.size() - 12, 12, "norm.weight") == 0) {
      t = at::ones(spec.shape, f32);
    } else if (zero || (n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0)) {
      t = at::zeros(spec.shape, f32);
    } else if (n == "t_embedder.mlp.0.weight" || n == "t_embedder.mlp.2.weight" || n == "t_block.1.weight" ||
               n == "y_embedder.y_proj.fc1.weight" || n == "y_embedder.y_proj.fc2.weight" || n == "fps_embedder.mlp.0.weight") {
      t = 0.02 * at::randn(spec.shape, gen, f32);
    } else {  // Xavier uniform over [out, everything else] (the patch embedding as a linear, as Open-Sora does)
      int64_t fan_in = 1;
      for (size_t i = 1; i < spec.shape.size(); ++i) fan_in *= spec.shape[i];
      const double a = std::sqrt(6.0 / static_cast<double>(fan_in + spec.shape[0]));
      t = (at::rand(spec.shape, gen, f32) * 2 - 1) * a;
    }
    weights[n] = t.to(options);
  }
  return STDiT3(config, std::move(weights));
}

void STDiT3::save_pretrained(const std::string& dir) const {
  ::mkdir(dir.c_str(), 0755);
  save_config(config_, dir + "/config.json");
  NamedTensors tensors;
  for (const auto& spec : stdit3_param_specs(config_)) tensors.emplace_back(spec.name, w(spec.name));
  save_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
}

at::Tensor STDiT3::null_caption() const {
  const at::Tensor& e = w("y_embedder.y_embedding");
  return e.unsqueeze(0).unsqueeze(0);
}

Conditioning STDiT3::prepare_conditioning(const ForwardArgs& a) const {
  if (!a.x.defined() || a.x.dim() != 5) fail("forward: x must be [B, C, T, H, W]");
  if (a.x.size(1) != config_.in_channels)
    fail("forward: x has ", a.x.size(1), " channels, the model takes ", config_.in_channels);
  for (auto [t, name] : {std::pair{&a.y, "y"}, {&a.fps, "fps"}, {&a.height, "height"}, {&a.width, "width"}})
    if (!t->defined()) fail("forward: input '", name, "' is missing");
  const int64_t B = a.x.size(0);
  const auto dtype = options_.dtype().toScalarType();
  const auto compute = layers::compute_type(dtype);
  const auto dev = options_.device();
  Conditioning c;
  c.batch = B;
  c.grid = token_grid(a.x.size(2), a.x.size(3), a.x.size(4), config_.patch_size);

  at::Tensor fps = repeat_to_batch(a.fps.reshape({-1}), B, "fps").to(dev).to(dtype);
  at::Tensor f_freq = layers::timestep_embedding(fps, 256, compute).to(dtype);
  c.fps_emb = at::linear(at::silu(at::linear(f_freq, w("fps_embedder.mlp.0.weight"), w("fps_embedder.mlp.0.bias"))),
                         w("fps_embedder.mlp.2.weight"), w("fps_embedder.mlp.2.bias"));

  // Caption: project all tokens, then attend only to the valid ones.
  at::Tensor y = a.y;
  if (y.dim() == 4) {
    if (y.size(1) != 1) fail("forward: y must be [B, 1, L, C], got dim 1 = ", y.size(1));
    y = y.squeeze(1);
  }
  if (y.dim() != 3) fail("forward: y must be [B, 1, L, C] or [B, L, C]");
  if (y.size(0) != B) fail("forward: y has batch ", y.size(0), ", x has ", B);
  if (y.size(2) != config_.caption_channels)
    fail("forward: y has ", y.size(2), " channels, the model's caption_channels is ", config_.caption_channels);
  c.y = layers::mlp(y.to(options_), w("y_embedder.y_proj.fc1.weight"), w("y_embedder.y_proj.fc1.bias"),
                    w("y_embedder.y_proj.fc2.weight"), w("y_embedder.y_proj.fc2.bias"));
  c.caption_mean = c.y.mean(1);  // [B, C] over the valid tokens (frame_caption_modulation)
  if (a.mask.defined()) {
    at::Tensor m = a.mask;
    while (m.dim() > 2 && m.size(1) == 1) m = m.squeeze(1);
    if (m.dim() == 1) m = m.unsqueeze(0);
    if (m.dim() != 2 || m.size(1) != y.size(1))
      fail("forward: mask must be [B, L] with L = ", y.size(1), " caption tokens");
    // Read once per video on the host: which rows are prefixes decides the attention's shape.
    at::Tensor valid = read_to_host(repeat_to_batch(m, B, "mask").ne(0));
    at::Tensor counts = valid.sum(1);
    if (counts.min().item<int64_t>() == 0) fail("forward: a caption mask row has no valid token");
    if (config_.frame_caption_modulation) {
      const at::Tensor v = valid.to(dev).to(c.y.scalar_type());
      c.caption_mean = (c.y * v.unsqueeze(-1)).sum(1) / v.sum(1, true);
    }
    // The common case (every row the same prefix of valid tokens) needs no attention mask.
    const int64_t first = counts[0].item<int64_t>();
    const bool prefix = valid.narrow(1, 0, first).all().item<bool>() &&
                        (first == valid.size(1) || !valid.narrow(1, first, valid.size(1) - first).any().item<bool>());
    if (prefix) {
      c.y = c.y.narrow(1, 0, first);
    } else {
      c.y_mask = valid.to(dev);
    }
  }
  c.caption_tokens = c.y.size(1);
  std::tie(c.rope_cos, c.rope_sin) = layers::rope_tables(w("rope.freqs"), c.grid.t);
  if (config_.reads_frame_index()) {
    at::Tensor f = a.frame_index.defined() ? a.frame_index : at::arange(c.grid.t, at::kLong);
    if (f.dim() == 1) f = f.unsqueeze(0);
    if (f.dim() != 2 || f.size(1) != c.grid.t)
      fail("forward: frame_index must be [T'] or [B, T'] with T' = ", c.grid.t, ", got ", f.sizes());
    if (f.size(0) != 1) f = repeat_to_batch(f, B, "frame_index");
    const at::Tensor frame_embed = layers::pos_embed_1d(f.to(dev), config_.hidden_size, compute).to(dtype);  // [B|1, T, C]
    if (config_.temporal_pos_embed) c.temporal_pos = frame_embed.unsqueeze(2);
    if (config_.frame_modulation) {
      c.frame_embed = frame_embed;
      if (!config_.frame_caption_modulation)  // reads the frame only: the same at every step
        c.frame_mlp = at::linear(frame_embed, w("frame_block.weight"), w("frame_block.bias"));
    }
  } else if (a.frame_index.defined()) {
    fail("forward: frame_index given, but the model reads none (no temporal position embedding or frame modulation)");
  }
  // The reference holds the sizes as model-dtype tensors (bf16 rounds a width of 854 to 856).
  const at::Tensor sizes = read_to_host(at::stack({a.height.reshape({-1})[0], a.width.reshape({-1})[0].to(a.height.device())}).to(dtype));
  const double hpx = sizes[0].item<double>(), wpx = sizes[1].item<double>();
  c.pos_scale = std::sqrt(hpx * wpx) / config_.input_sq_size;
  c.pos_table = pos_embedding(c);
  return c;
}

namespace {

// gate * branch, or base + gate * branch in one pass when base is given (the fused step).
at::Tensor gated(const at::Tensor& gate, const at::Tensor& branch, const at::Tensor& base) {
  return base.defined() ? at::addcmul(base, branch, gate) : gate * branch;
}

// adaLN-single parameters of a block: [B, 6, 1, 1, C] (shift/scale/gate for msa, then mlp);
// [B, 6, T, 1, C] with per-frame terms (config.frame_modulation).
at::Tensor block_modulation(const at::Tensor& sst, const Conditioning& c) {
  const int64_t B = c.t_mlp.size(0), C = sst.size(1);
  at::Tensor m = (sst.unsqueeze(0) + c.t_mlp.reshape({B, 6, C})).reshape({B, 6, 1, 1, C});
  if (c.frame_mlp.defined()) {
    const int64_t Bf = c.frame_mlp.size(0), T = c.frame_mlp.size(1);
    m = m + c.frame_mlp.reshape({Bf, T, 6, C}).permute({0, 2, 1, 3}).unsqueeze(3);  // [Bf, 6, T, 1, C]
  }
  return m;
}

}  // namespace

void STDiT3::set_timestep(DiTContext& ctx, const at::Tensor& timestep) const {
  auto& c = dynamic_cast<Conditioning&>(ctx);
  if (!timestep.defined()) fail("forward: input 'timestep' is missing");
  const auto dtype = options_.dtype().toScalarType();
  // Timestep: rounded to the model dtype first (the reference's `timestep.to(dtype)`).
  at::Tensor ts = repeat_to_batch(timestep.reshape({-1}), c.batch, "timestep").to(options_.device()).to(dtype);
  at::Tensor t_freq = layers::timestep_embedding(ts, 256, layers::compute_type(dtype)).to(dtype);
  at::Tensor t = at::linear(at::silu(at::linear(t_freq, w("t_embedder.mlp.0.weight"), w("t_embedder.mlp.0.bias"))),
                            w("t_embedder.mlp.2.weight"), w("t_embedder.mlp.2.bias"));
  // In place (assign_in_place): the tensors keep their storage from step to step.
  assign_in_place(c.t, t + c.fps_emb);
  assign_in_place(c.t_mlp, at::linear(at::silu(c.t), w("t_block.1.weight"), w("t_block.1.bias")));
  if (config_.frame_caption_modulation) {
    const at::Tensor input = at::silu(c.t.unsqueeze(1) + c.frame_embed + c.caption_mean.unsqueeze(1));  // [B, T, C]
    assign_in_place(c.frame_mlp, at::linear(input, w("frame_block.weight"), w("frame_block.bias")));
  }
  for (int i = 0; i < config_.depth; ++i)
    for (BlockKind kind : {BlockKind::Spatial, BlockKind::Temporal})
      assign_modulation(c.modulation_tables, c.modulation, 2 * i + (kind == BlockKind::Temporal),
                        block_modulation(block_weights(kind, i).sst, c), false);
}

Conditioning STDiT3::condition(const ForwardArgs& a) const {
  Conditioning c = prepare_conditioning(a);
  set_timestep(c, a.timestep);
  return c;
}

std::unique_ptr<DiTContext> STDiT3::prepare(const DiTInputs& inputs) const {
  return std::make_unique<Conditioning>(prepare_conditioning(inputs));
}

at::Tensor STDiT3::pos_embedding(const Conditioning& c) const {
  const int base_size = static_cast<int>(std::lround(std::sqrt(static_cast<double>(c.grid.s()))));
  const auto dtype = options_.dtype().toScalarType();
  return layers::pos_embed_2d(c.grid.h, c.grid.w, config_.hidden_size, c.pos_scale, base_size,
                              layers::compute_type(dtype), options_.device(), dtype)
      .to(dtype);
}

at::Tensor STDiT3::embed_tokens(const at::Tensor& tokens, int64_t s_begin, const Conditioning& c) const {
  at::Tensor h = layers::embed_patches(tokens.to(options_), w("x_embedder.proj.weight"), w("x_embedder.proj.bias"));
  h = h + c.pos_table.narrow(0, s_begin, tokens.size(2));
  return c.temporal_pos.defined() ? h + c.temporal_pos : h;
}

const std::vector<at::Tensor>& STDiT3::modulation(BlockKind kind, int index, const Conditioning& c) const {
  const size_t b = static_cast<size_t>(index) * 2 + (kind == BlockKind::Temporal ? 1 : 0);
  if (b >= c.modulation.size()) fail("STDiT3: the conditioning has no timestep (call set_timestep first)");
  return c.modulation[b];
}

at::Tensor STDiT3::self_attention_residual(BlockKind kind, int index, const at::Tensor& x, const Conditioning& c,
                                           AttentionSeam* seam, const at::Tensor& base) const {
  const BlockWeights& bw = block_weights(kind, index);
  const auto& mod = modulation(kind, index, c);
  const AttentionScope scope = kind == BlockKind::Spatial ? AttentionScope::Frame : AttentionScope::Time;
  // Spatial attention needs whole frames: the only place activations change layout (the seam runs
  // `local` in frame layout, frame by frame independent, possibly in groups of frames).
  const AttentionSeam::Local local = [&](const at::Tensor& h) {
    const int64_t B = h.size(0), T = h.size(1), S = h.size(2), C = h.size(3);
    const int64_t H = config_.num_heads, D = config_.head_dim();
    // Sequences: the S tokens of a frame (spatial) or the T frames of a position (temporal). A layout
    // switch may hand frames over position-major ([S, B, T, C] in memory): the projections then read
    // and write that order in place, and the output goes back in it.
    const std::vector<int64_t> order = layers::memory_order(h);
    size_t outer = 0;  // the outermost dimension of more than one element
    while (outer + 1 < order.size() && h.size(order[outer]) == 1) ++outer;
    const bool position_major = kind == BlockKind::Spatial && B * T > 1 && order[outer] == 2;
    at::Tensor qkv = kind == BlockKind::Spatial
                         ? layers::linear_in_memory_order(h, bw.qkv_w, bw.qkv_b).reshape({B * T, S, 3 * C})
                         : at::linear(h.permute({0, 2, 1, 3}).reshape({B * S, T, C}), bw.qkv_w, bw.qkv_b);
    const int64_t N = qkv.size(0), L = qkv.size(1);
    qkv = qkv.view({N, L, 3, H, D}).permute({2, 0, 3, 1, 4});
    at::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
    if (config_.qk_norm) {
      q = layers::rms_norm(q, bw.q_norm);
      k = layers::rms_norm(k, bw.k_norm);
    }
    if (kind == BlockKind::Temporal) {
      q = layers::apply_rope(q, c.rope_cos, c.rope_sin);
      k = layers::apply_rope(k, c.rope_cos, c.rope_sin);
    }
    // 16-bit runs follow the reference's kernels: its explicit math path for temporal attention
    // (flash attention only pays off for long sequences).
    const bool half_precision = q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf;
    const AttentionSeam::Attend attend = [&](const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_) {
      return kind == BlockKind::Temporal && half_precision ? layers::attention_math(q_, k_, v_) : layers::attention(q_, k_, v_);
    };
    at::Tensor o = seam ? seam->attention(scope, q, k, v, attend) : attend(q, k, v);  // [N, H, L, D]
    if (position_major) {
      o = at::linear(o.permute({2, 0, 1, 3}).reshape({L, N, C}), bw.proj_w, bw.proj_b);  // [S, B T, C]
      o = o.view({S, B, T, C}).permute({1, 2, 0, 3});
    } else {
      o = at::linear(o.transpose(1, 2).reshape({N, L, C}), bw.proj_w, bw.proj_b);
      o = kind == BlockKind::Spatial ? o.view({B, T, S, C}) : o.view({B, S, T, C}).permute({0, 2, 1, 3});
    }
    return o;
  };
  const at::Tensor h = modulated_input(kind, index, x, c);
  return gated(mod[2], seam ? seam->run_in(scope, h, local) : local(h), base);
}

at::Tensor STDiT3::cross_attention_residual(BlockKind kind, int index, const at::Tensor& x,
                                            const Conditioning& c) const {
  const BlockWeights& bw = block_weights(kind, index);
  const int64_t B = x.size(0), T = x.size(1), S = x.size(2), C = x.size(3);
  const int64_t H = config_.num_heads, D = config_.head_dim(), L = c.y.size(1);
  // No norm, no modulation, no gate (as in the reference).
  at::Tensor q = at::linear(x.reshape({B, T * S, C}), bw.cq_w, bw.cq_b).view({B, T * S, H, D}).transpose(1, 2);
  at::Tensor kv = at::linear(c.y, bw.ckv_w, bw.ckv_b).view({B, L, 2, H, D});
  at::Tensor k = kv.select(2, 0).transpose(1, 2), v = kv.select(2, 1).transpose(1, 2);
  at::Tensor o = layers::attention(q, k, v, c.y_mask).transpose(1, 2).reshape({B, T * S, C});
  return at::linear(o, bw.cproj_w, bw.cproj_b).view({B, T, S, C});
}

at::Tensor STDiT3::mlp_residual(BlockKind kind, int index, const at::Tensor& x, const Conditioning& c,
                                const at::Tensor& base) const {
  const BlockWeights& bw = block_weights(kind, index);
  const auto& mod = modulation(kind, index, c);
  const at::Tensor h = layers::modulated_layer_norm(x, mod[3], mod[4], 1e-6, x.scalar_type());
  return gated(mod[5], layers::mlp(h, bw.fc1_w, bw.fc1_b, bw.fc2_w, bw.fc2_b), base);
}

at::Tensor STDiT3::modulated_input(BlockKind kind, int index, const at::Tensor& x, const Conditioning& c) const {
  const auto& mod = modulation(kind, index, c);
  return layers::modulated_layer_norm(x, mod[0], mod[1], 1e-6, x.scalar_type());
}

at::Tensor STDiT3::block(BlockKind kind, int index, const at::Tensor& x, const Conditioning& c,
                         AttentionSeam* seam) const {
  const int first = 3 * (2 * index + (kind == BlockKind::Temporal ? 1 : 0));
  UnitLoop loop;
  loop.residual = [&](int u, const at::Tensor& h) { return unit_residual(u, h, c, seam); };
  return run_units(units(), x, first, first + 3, loop);
}

at::Tensor STDiT3::final_tokens(const at::Tensor& x, const Conditioning& c) const {
  const int64_t B = x.size(0), C = x.size(3);
  at::Tensor m = (w("final_layer.scale_shift_table").unsqueeze(0) + c.t.unsqueeze(1)).reshape({B, 2, 1, 1, C});
  at::Tensor h = layers::modulate(layers::layer_norm(x), m.select(1, 0), m.select(1, 1));
  h = at::linear(h, w("final_layer.linear.weight"), w("final_layer.linear.bias"));
  return h.to(layers::compute_type(options_.dtype().toScalarType()));
}

at::Tensor STDiT3::prediction_channels(const at::Tensor& out) const {
  std::vector<int64_t> shape = out.sizes().vec();
  shape.back() = config_.patch_volume();
  shape.push_back(config_.out_channels());
  at::Tensor t = out.reshape(shape).narrow(-1, 0, config_.in_channels);
  shape.pop_back();
  shape.back() = config_.patch_volume() * config_.in_channels;
  return t.reshape(shape);
}

void STDiT3::observe_context(const DiTContext& ctx, const Observer& observe) const {
  const auto& c = dynamic_cast<const Conditioning&>(ctx);
  observe("t", c.t);
  observe("t_mlp", c.t_mlp);
  observe("pos_emb", c.pos_table.unsqueeze(0));
}

// --- DiT ---

std::vector<UnitInfo> stdit3_units(int depth) {
  std::vector<UnitInfo> units;
  for (int i = 0; i < depth; ++i) {
    for (BlockKind kind : {BlockKind::Spatial, BlockKind::Temporal}) {
      const bool spatial = kind == BlockKind::Spatial;
      const int block = 2 * i + (spatial ? 0 : 1);
      const std::string p = kind_prefix(kind) + std::to_string(i) + ".";
      const AttentionScope scope = spatial ? AttentionScope::Frame : AttentionScope::Time;
      units.push_back({p + "attn", spatial ? UnitRole::SpatialAttention : UnitRole::TemporalAttention, scope, block, i});
      units.push_back({p + "cross_attn", UnitRole::CrossAttention, scope, block, i});
      units.push_back({p + "mlp", UnitRole::Mlp, scope, block, i});
    }
  }
  return units;
}

ModelOutline stdit3_outline(const STDiT3Config& c) {
  ModelOutline o;
  o.family = "stdit3";
  o.shape.in_channels = c.in_channels;
  o.shape.out_channels = c.out_channels();
  o.shape.patch = c.patch_size;
  o.shape.hidden_size = c.hidden_size;
  o.shape.num_heads = c.num_heads;
  o.shape.depth = c.depth;
  o.shape.caption_tokens = c.model_max_length;
  o.shape.caption_channels = c.caption_channels;
  o.units = stdit3_units(c.depth);
  o.config = config_json(c);
  return o;
}

std::string STDiT3::block_name(int block) const {
  return kind_prefix(block % 2 ? BlockKind::Temporal : BlockKind::Spatial) + std::to_string(block / 2);
}

nlohmann::ordered_json STDiT3::describe() const {
  return {{"family", family()},
          {"hidden_size", config_.hidden_size},
          {"depth", config_.depth},
          {"num_heads", config_.num_heads},
          {"patch_size", config_.patch_size},
          {"in_channels", config_.in_channels},
          {"latent_space", latent_space_name(config_.latent_space)}};
}

double STDiT3::unit_flops(int unit, const TokenGrid& g, int64_t batch, int64_t caption_tokens) const {
  const UnitFlops f = stdit3_unit_flops(config_, batch, g.t, g.s(), caption_tokens);
  switch (units().at(unit).role) {
    case UnitRole::SpatialAttention: return f.spatial_attn;
    case UnitRole::TemporalAttention: return f.temporal_attn;
    case UnitRole::CrossAttention: return f.cross_attn;
    default: return f.mlp;
  }
}

double STDiT3::forward_flops(const TokenGrid& g, int64_t batch, int64_t caption_tokens) const {
  return stdit3_forward_flops(config_, batch, g.t, g.s(), caption_tokens);
}

at::Tensor STDiT3::embed(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx) const {
  return embed_tokens(tokens, begin, dynamic_cast<const Conditioning&>(ctx));
}

at::Tensor STDiT3::unit_residual(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const {
  const auto& c = dynamic_cast<const Conditioning&>(ctx);
  const int block = unit / 3;
  const BlockKind kind = block % 2 ? BlockKind::Temporal : BlockKind::Spatial;
  switch (unit % 3) {
    case 0: return self_attention_residual(kind, block / 2, x, c, seam);
    case 1: return cross_attention_residual(kind, block / 2, x, c);
    default: return mlp_residual(kind, block / 2, x, c);
  }
}

at::Tensor STDiT3::unit_apply(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const {
  if (!x.is_cuda() || unit % 3 == 1) return x + unit_residual(unit, x, ctx, seam);
  const auto& c = dynamic_cast<const Conditioning&>(ctx);
  const int block = unit / 3;
  const BlockKind kind = block % 2 ? BlockKind::Temporal : BlockKind::Spatial;
  return unit % 3 == 0 ? self_attention_residual(kind, block / 2, x, c, seam, x) : mlp_residual(kind, block / 2, x, c, x);
}

at::Tensor STDiT3::head(const at::Tensor& x, const DiTContext& ctx) const {
  return final_tokens(x, dynamic_cast<const Conditioning&>(ctx));
}

at::Tensor STDiT3::probe(ProbeSignal signal, const at::Tensor& x, const DiTContext& ctx) const {
  (void)signal;  // TeaCache: the modulated input of the first block's self-attention
  return modulated_input(BlockKind::Spatial, 0, x, dynamic_cast<const Conditioning&>(ctx));
}

void STDiT3::check_layout(const std::string& layout, int ranks, const TokenGrid& g) const {
  if (layout != "dsp") fail("STDiT3 runs sequence parallelism as DSP, not '", layout, "'");
  if (ranks > g.s())
    fail("--sp ", ranks, " is more ranks than the ", g.s(), " spatial token positions of this video (", g.t,
         " frames x ", g.s(), " positions): use a larger video or fewer ranks");
}

UnitFlops stdit3_unit_flops(const STDiT3Config& c, int64_t B, int64_t T, int64_t S, int64_t L) {
  const double C = c.hidden_size, M = c.mlp_hidden(), N = static_cast<double>(B) * T * S;
  UnitFlops f;
  const double qkv_proj = N * 2 * 4 * C * C;
  f.spatial_attn = qkv_proj + 4.0 * B * T * static_cast<double>(S) * S * C;
  f.temporal_attn = qkv_proj + 4.0 * B * S * static_cast<double>(T) * T * C;
  f.cross_attn = N * 2 * 2 * C * C + 2.0 * B * L * 2 * C * C + 4.0 * N * L * C;
  f.mlp = N * 2 * 2 * C * M;
  return f;
}

double stdit3_forward_flops(const STDiT3Config& c, int64_t B, int64_t T, int64_t S, int64_t L) {
  const UnitFlops u = stdit3_unit_flops(c, B, T, S, L);
  const double N = static_cast<double>(B) * T * S;
  const double per_pair = u.spatial_attn + u.temporal_attn + 2 * (u.cross_attn + u.mlp);
  const double embed = 2.0 * N * c.hidden_size * c.in_channels * c.patch_volume();
  const double final = 2.0 * N * c.hidden_size * c.patch_volume() * c.out_channels();
  const double caption = 2.0 * B * c.model_max_length * (c.caption_channels * c.hidden_size + c.hidden_size * c.hidden_size);
  return c.depth * per_pair + embed + final + caption;
}

}  // namespace ditto
