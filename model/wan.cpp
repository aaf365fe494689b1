// The Wan transformer (see wan.h). Numerics follow diffusers' WanTransformer3DModel: the residual
// stream, norms, modulation and head in float32 (float64 for a float64 run), the projections in the
// run's dtype, RoPE tables computed in float64.
#include "model/wan.h"

#include <sys/stat.h>

#include <cmath>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"
#include "model/layers.h"

namespace ditto {

namespace {

at::ScalarType compute_of(const at::TensorOptions& o) { return layers::compute_type(o.dtype().toScalarType()); }

// Tensors kept in the compute dtype whatever the run's dtype (diffusers' _keep_in_fp32_modules, and
// the head, which the official code runs under float32 autocast).
bool kept_in_compute_type(const std::string& name) {
  return name.find("time_embedder") != std::string::npos || name.find("scale_shift_table") != std::string::npos ||
         name.find(".norm2.") != std::string::npos || name.rfind("proj_out.", 0) == 0;
}

// One fused pass (LibTorch's rms_norm kernel; accumulates in float32 for half types).
at::Tensor rms(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return at::rms_norm(x, {x.size(-1)}, weight, eps);
}

// RoPE on interleaved pairs as one complex product (the official code's form): x [B, L, H, D],
// cis [L, 1, D/2] complex (cos + i sin) in the compute type; half types go through it and back.
at::Tensor rope(const at::Tensor& x, const at::Tensor& cis) {
  const at::ScalarType real = at::toRealValueType(cis.scalar_type());
  const at::Tensor xc = at::view_as_complex(x.to(real).unflatten(-1, {-1, 2}).contiguous());
  return at::view_as_real(xc * cis).flatten(-2).to(x.scalar_type());
}

}  // namespace

void WanConfig::validate() const {
  // Positive and within what any DiT uses (see STDiT3Config::validate).
  check_config_size("dim", dim, 65536);
  check_config_size("ffn_dim", ffn_dim, 1 << 20);
  check_config_size("num_heads", num_heads, 1024);
  check_config_size("num_layers", num_layers, 1024);
  check_config_size("in_channels", in_channels, 4096);
  check_config_size("out_channels", out_channels, 4096);
  check_config_size("freq_dim", freq_dim, 65536);
  check_config_size("text_dim", text_dim, 65536);
  check_config_size("text_len", text_len, 65536);
  check_config_size("rope_max_seq_len", rope_max_seq_len, 1 << 20);
  for (int p : patch_size) check_config_size("patch_size", p, 64);
  if (dim % num_heads) fail("config: dim ", dim, " is not divisible by num_heads ", num_heads);
  if (head_dim() % 2 || head_dim() < 6) fail("config: head dim ", head_dim(), " must be even and at least 6 (3-D RoPE)");
  if (freq_dim % 2) fail("config: freq_dim ", freq_dim, " must be even");
  if (!(eps > 0)) fail("config: eps must be positive");
}

WanConfig parse_wan_config(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail("'", where, "': the config is not a JSON object");
  WanConfig c;
  auto get = [&](const char* key, auto& out) {
    if (!j.contains(key) || j[key].is_null()) return false;
    config_field(j, key, out, "'" + where + "'");
    return true;
  };
  const bool diffusers = j.contains("num_attention_heads");
  if (diffusers) {
    int heads = 0, head_dim = 0;
    get("num_attention_heads", heads);
    if (!get("attention_head_dim", head_dim)) fail("'", where, "': attention_head_dim is missing");
    if (static_cast<int64_t>(heads) * head_dim > 65536)
      fail("'", where, "': num_attention_heads x attention_head_dim = ", static_cast<int64_t>(heads) * head_dim,
           " is beyond any DiT (at most 65536)");
    c.num_heads = heads;
    c.dim = heads * head_dim;
    get("ffn_dim", c.ffn_dim);
    get("num_layers", c.num_layers);
    get("in_channels", c.in_channels);
    get("out_channels", c.out_channels);
    get("freq_dim", c.freq_dim);
    get("text_dim", c.text_dim);
    get("eps", c.eps);
    get("cross_attn_norm", c.cross_attn_norm);
    get("rope_max_seq_len", c.rope_max_seq_len);
    std::string qk;
    if (j.contains("qk_norm") && j["qk_norm"].is_string()) qk = j["qk_norm"].get<std::string>();
    if (!qk.empty() && qk != "rms_norm_across_heads")
      fail("'", where, "', field 'qk_norm': '", qk, "' is not supported (rms_norm_across_heads)");
    for (const char* unsupported : {"image_dim", "added_kv_proj_dim", "pos_embed_seq_len"})
      if (j.contains(unsupported) && !j[unsupported].is_null())
        fail("'", where, "', field '", unsupported, "': image conditioning (I2V) is not supported");
  } else {
    get("dim", c.dim);
    get("ffn_dim", c.ffn_dim);
    get("num_heads", c.num_heads);
    get("num_layers", c.num_layers);
    get("in_dim", c.in_channels);
    get("out_dim", c.out_channels);
    get("freq_dim", c.freq_dim);
    get("text_len", c.text_len);
    get("text_dim", c.text_dim);  // not stored by WanModel (4096), read when a config has it
    get("eps", c.eps);
    std::string type;
    if (j.contains("model_type") && j["model_type"].is_string()) type = j["model_type"].get<std::string>();
    if (!type.empty() && type != "t2v") fail("'", where, "', field 'model_type': '", type, "' is not supported (t2v)");
  }
  get("patch_size", c.patch_size);
  get("text_len", c.text_len);
  std::string space;
  if (get("latent_space", space)) {
    if (space != "pixel") fail("'", where, "', field 'latent_space': '", space, "' is not known (pixel, or leave it out for Wan-VAE latents)");
    c.pixel = true;
  }
  try {
    c.validate();
  } catch (const Error& e) {
    fail("'", where, "': ", e.what());
  }
  return c;
}

nlohmann::ordered_json wan_config_json(const WanConfig& c) {
  nlohmann::ordered_json j = {{"_class_name", "WanTransformer3DModel"},
          {"patch_size", c.patch_size},
          {"num_attention_heads", c.num_heads},
          {"attention_head_dim", c.head_dim()},
          {"in_channels", c.in_channels},
          {"out_channels", c.out_channels},
          {"text_dim", c.text_dim},
          {"freq_dim", c.freq_dim},
          {"ffn_dim", c.ffn_dim},
          {"num_layers", c.num_layers},
          {"cross_attn_norm", c.cross_attn_norm},
          {"qk_norm", "rms_norm_across_heads"},
          {"eps", c.eps},
          {"rope_max_seq_len", c.rope_max_seq_len},
          {"text_len", c.text_len}};
  if (c.pixel) j["latent_space"] = "pixel";
  return j;
}

WanConfig wan_builtin_config(const std::string& name) {
  WanConfig c;  // defaults are T2V-1.3B
  if (name == "wan2.1-t2v-1.3b") {
  } else if (name == "wan2.1-t2v-14b" || name == "wan2.2-t2v-a14b") {
    c.dim = 5120, c.ffn_dim = 13824, c.num_heads = 40, c.num_layers = 40;
  } else if (name == "wan-demo" || name == "wan-demo-tiny") {  // pixel space, 16 x 32 x 32 RGB: the STDiT demo's data and text encoder
    const bool full = name == "wan-demo";
    c.pixel = true;
    c.in_channels = c.out_channels = 3;
    c.patch_size = {1, 4, 4};
    c.dim = full ? 128 : 32, c.ffn_dim = full ? 512 : 64, c.num_heads = full ? 4 : 2, c.num_layers = full ? 6 : 1;
    c.freq_dim = full ? 256 : 32, c.text_dim = full ? 64 : 16, c.text_len = 18, c.rope_max_seq_len = 32;
  } else if (name == "wan-tiny" || name == "wan2.2-tiny") {  // unit tests (wan2.2-tiny: two such experts)
    c.dim = 24, c.ffn_dim = 32, c.num_heads = 2, c.num_layers = 2, c.in_channels = 4, c.out_channels = 4;
    c.freq_dim = 16, c.text_dim = 16, c.text_len = 8, c.rope_max_seq_len = 32;
  } else {
    std::string known;
    for (const auto& n : wan_builtin_config_names()) known += (known.empty() ? "" : ", ") + n;
    fail("unknown model config '", name, "' (built-in Wan: ", known, ")");
  }
  c.validate();
  return c;
}

std::vector<std::string> wan_builtin_config_names() { return {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-t2v-a14b", "wan-tiny", "wan2.2-tiny", "wan-demo", "wan-demo-tiny"}; }

std::vector<ParamSpec> wan_param_specs(const WanConfig& c) {
  const int64_t C = c.dim, F = c.ffn_dim;
  std::vector<ParamSpec> s;
  auto add = [&](std::string name, std::vector<int64_t> shape) { s.push_back({std::move(name), std::move(shape)}); };
  auto linear = [&](const std::string& p, int64_t out, int64_t in) {
    add(p + ".weight", {out, in});
    add(p + ".bias", {out});
  };
  add("scale_shift_table", {1, 2, C});
  add("patch_embedding.weight", {C, c.in_channels, c.patch_size[0], c.patch_size[1], c.patch_size[2]});
  add("patch_embedding.bias", {C});
  linear("condition_embedder.time_embedder.linear_1", C, c.freq_dim);
  linear("condition_embedder.time_embedder.linear_2", C, C);
  linear("condition_embedder.time_proj", 6 * C, C);
  linear("condition_embedder.text_embedder.linear_1", C, c.text_dim);
  linear("condition_embedder.text_embedder.linear_2", C, C);
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    add(p + "scale_shift_table", {1, 6, C});
    for (const char* attn : {"attn1", "attn2"}) {
      for (const char* proj : {"to_q", "to_k", "to_v", "to_out.0"}) linear(p + attn + "." + proj, C, C);
      add(p + attn + ".norm_q.weight", {C});
      add(p + attn + ".norm_k.weight", {C});
    }
    if (c.cross_attn_norm) {
      add(p + "norm2.weight", {C});
      add(p + "norm2.bias", {C});
    }
    linear(p + "ffn.net.0.proj", F, C);
    linear(p + "ffn.net.2", C, F);
  }
  linear("proj_out", c.out_channels * c.patch_volume(), C);
  return s;
}

std::string wan_diffusers_name(const std::string& n) {
  // Whole prefixes first, then the per-block pieces (DiffSynth's and diffusers' converters).
  static const std::vector<std::pair<std::string, std::string>> top = {
      {"text_embedding.0.", "condition_embedder.text_embedder.linear_1."},
      {"text_embedding.2.", "condition_embedder.text_embedder.linear_2."},
      {"time_embedding.0.", "condition_embedder.time_embedder.linear_1."},
      {"time_embedding.2.", "condition_embedder.time_embedder.linear_2."},
      {"time_projection.1.", "condition_embedder.time_proj."},
      {"head.head.", "proj_out."}};
  for (const auto& [from, to] : top)
    if (n.rfind(from, 0) == 0) return to + n.substr(from.size());
  if (n == "head.modulation") return "scale_shift_table";
  if (n.rfind("blocks.", 0) != 0) return n;
  const auto dot = n.find('.', 7);
  if (dot == std::string::npos) return n;
  const std::string block = n.substr(0, dot + 1), rest = n.substr(dot + 1);
  static const std::vector<std::pair<std::string, std::string>> inner = {
      {"modulation", "scale_shift_table"},
      {"self_attn.q.", "attn1.to_q."}, {"self_attn.k.", "attn1.to_k."}, {"self_attn.v.", "attn1.to_v."},
      {"self_attn.o.", "attn1.to_out.0."}, {"self_attn.norm_q.", "attn1.norm_q."}, {"self_attn.norm_k.", "attn1.norm_k."},
      {"cross_attn.q.", "attn2.to_q."}, {"cross_attn.k.", "attn2.to_k."}, {"cross_attn.v.", "attn2.to_v."},
      {"cross_attn.o.", "attn2.to_out.0."}, {"cross_attn.norm_q.", "attn2.norm_q."}, {"cross_attn.norm_k.", "attn2.norm_k."},
      {"norm3.", "norm2."},  // the cross-attention LayerNorm: norm3 in the official code, norm2 in diffusers'
      {"ffn.0.", "ffn.net.0.proj."}, {"ffn.2.", "ffn.net.2."}};
  for (const auto& [from, to] : inner)
    if (rest.rfind(from, 0) == 0) return block + to + rest.substr(from.size());
  return n;
}

std::vector<UnitInfo> wan_units(int layers) {
  std::vector<UnitInfo> u;
  for (int i = 0; i < layers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    u.push_back({p + "self_attn", UnitRole::FullAttention, AttentionScope::Video, i, i});
    u.push_back({p + "cross_attn", UnitRole::CrossAttention, AttentionScope::Video, i, i});
    u.push_back({p + "ffn", UnitRole::Mlp, AttentionScope::Video, i, i});
  }
  return u;
}

ModelOutline wan_outline(const WanConfig& c) {
  ModelOutline o;
  o.family = "wan";
  o.shape.in_channels = c.in_channels;
  o.shape.out_channels = c.out_channels;
  o.shape.patch = c.patch_size;
  o.shape.hidden_size = c.dim;
  o.shape.num_heads = c.num_heads;
  o.shape.depth = c.num_layers;
  o.shape.caption_tokens = c.text_len;
  o.shape.caption_channels = c.text_dim;
  o.units = wan_units(c.num_layers);
  o.config = wan_config_json(c);
  return o;
}

Wan::Wan(WanConfig config, std::map<std::string, at::Tensor> weights)
    : config_(std::move(config)), weights_(std::move(weights)) {
  config_.validate();
  check_weights(wan_param_specs(config_), weights_, "Wan");
  options_ = weights_.at("patch_embedding.weight").options();
  const auto compute = compute_of(options_);
  for (auto& [name, t] : weights_)
    if (kept_in_compute_type(name)) t = t.to(compute);
  outline_ = wan_outline(config_);
  for (int i = 0; i < config_.num_layers; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    auto attn = [&](const std::string& a) {
      return AttentionWeights{w(a + "to_q.weight"), w(a + "to_q.bias"), w(a + "to_k.weight"), w(a + "to_k.bias"),
                              w(a + "to_v.weight"), w(a + "to_v.bias"), w(a + "to_out.0.weight"), w(a + "to_out.0.bias"),
                              w(a + "norm_q.weight"), w(a + "norm_k.weight")};
    };
    BlockWeights b;
    b.sst = w(p + "scale_shift_table");
    if (config_.cross_attn_norm) b.norm2_w = w(p + "norm2.weight"), b.norm2_b = w(p + "norm2.bias");
    b.fc1_w = w(p + "ffn.net.0.proj.weight"), b.fc1_b = w(p + "ffn.net.0.proj.bias");
    b.fc2_w = w(p + "ffn.net.2.weight"), b.fc2_b = w(p + "ffn.net.2.bias");
    b.self_attn = attn(p + "attn1.");
    b.cross_attn = attn(p + "attn2.");
    blocks_.push_back(std::move(b));
  }
}

const at::Tensor& Wan::w(const std::string& name) const { return weight_named(weights_, name, "Wan"); }

Wan Wan::from_pretrained(const std::string& dir, const at::TensorOptions& options) {
  const WanConfig c = parse_wan_config(read_json_file(dir + "/config.json", "model config"), dir + "/config.json");
  std::ostringstream described;
  described << "dim=" << c.dim << ", num_layers=" << c.num_layers << ", num_heads=" << c.num_heads
            << ", ffn_dim=" << c.ffn_dim << ", in_channels=" << c.in_channels << ", text_dim=" << c.text_dim;
  return Wan(c, load_strict(Checkpoint::open(dir, {"diffusion_pytorch_model", "model"}), wan_param_specs(c), options,
                            described.str(), wan_diffusers_name));
}

namespace {

// Every tensor of a config drawn from `seed`: for tests and benchmarks (`training` false) every tensor
// random and of moderate size, norms near 1 and small biases (a zero would hide errors); for
// training diffusers' initialisation: Xavier-uniform linears, zero biases and output projection,
// unit norms. Both draw the modulation tables randn / sqrt(dim).
std::map<std::string, at::Tensor> initial_weights(const WanConfig& c, uint64_t seed, const at::TensorOptions& options,
                                                  bool training) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  std::map<std::string, at::Tensor> weights;
  for (const auto& spec : wan_param_specs(c)) {
    const std::string& n = spec.name;
    const bool bias = n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0;
    int64_t fan_in = 1;
    for (size_t i = 1; i < spec.shape.size(); ++i) fan_in *= spec.shape[i];
    at::Tensor t;
    if (n.find("scale_shift_table") != std::string::npos) {
      t = at::randn(spec.shape, gen, f32) / std::sqrt(static_cast<double>(c.dim));
    } else if (n.find("norm") != std::string::npos && !bias) {
      t = training ? at::ones(spec.shape, f32) : 1.0 + 0.1 * at::randn(spec.shape, gen, f32);
    } else if (bias || (training && n.rfind("proj_out.", 0) == 0)) {
      t = training ? at::zeros(spec.shape, f32) : 0.02 * at::randn(spec.shape, gen, f32);
    } else if (training) {  // Xavier uniform over [out, everything else]
      const double a = std::sqrt(6.0 / static_cast<double>(fan_in + spec.shape[0]));
      t = (at::rand(spec.shape, gen, f32) * 2 - 1) * a;
    } else {  // unit-variance outputs for unit-variance inputs
      t = at::randn(spec.shape, gen, f32) / std::sqrt(static_cast<double>(fan_in));
    }
    weights[n] = t.to(options);
  }
  return weights;
}

}  // namespace

Wan Wan::random(const WanConfig& c, uint64_t seed, const at::TensorOptions& options) {
  return Wan(c, initial_weights(c, seed, options, false));
}

std::map<std::string, at::Tensor> Wan::training_init(const WanConfig& c, uint64_t seed, const at::TensorOptions& options) {
  return initial_weights(c, seed, options, true);
}

void Wan::save_pretrained(const std::string& dir) const {
  ::mkdir(dir.c_str(), 0755);
  write_file_atomic(dir + "/config.json", [&](std::ostream& os) { os << dump_json(wan_config_json(config_), 2) << "\n"; });
  NamedTensors tensors;
  for (const auto& spec : wan_param_specs(config_)) tensors.emplace_back(spec.name, w(spec.name));
  save_safetensors(dir + "/diffusion_pytorch_model.safetensors", tensors, {{"format", "pt"}});
}

nlohmann::ordered_json Wan::describe() const {
  return {{"family", "wan"}, {"dim", config_.dim}, {"num_layers", config_.num_layers}, {"num_heads", config_.num_heads},
          {"ffn_dim", config_.ffn_dim}, {"patch_size", config_.patch_size}, {"in_channels", config_.in_channels},
          {"text_len", config_.text_len}};
}

std::unique_ptr<DiTContext> Wan::prepare(const DiTInputs& a) const {
  if (!a.x.defined() || a.x.dim() != 5) fail("forward: hidden_states must be [B, C, T, H, W]");
  if (a.x.size(1) != config_.in_channels)
    fail("forward: hidden_states has ", a.x.size(1), " channels, the model takes ", config_.in_channels);
  if (!a.y.defined()) fail("forward: input 'encoder_hidden_states' is missing");
  if (a.frame_index.defined()) fail("forward: Wan reads no frame_index");
  auto c = std::make_unique<WanContext>();
  const int64_t B = a.x.size(0);
  c->batch = B;
  c->grid = token_grid(a.x.size(2), a.x.size(3), a.x.size(4), config_.patch_size);
  if (c->grid.t > config_.rope_max_seq_len || c->grid.h > config_.rope_max_seq_len || c->grid.w > config_.rope_max_seq_len)
    fail("forward: a token grid of ", c->grid.t, " x ", c->grid.h, " x ", c->grid.w, " exceeds the RoPE table (",
         config_.rope_max_seq_len, " positions per axis)");
  at::Tensor y = a.y;
  if (y.dim() == 4) {
    if (y.size(1) != 1) fail("forward: encoder_hidden_states must be [B, L, C] or [B, 1, L, C]");
    y = y.squeeze(1);
  }
  if (y.dim() != 3 || y.size(0) != B || y.size(2) != config_.text_dim)
    fail("forward: encoder_hidden_states must be [", B, ", L, ", config_.text_dim, "], got ", y.sizes());
  if (y.size(1) > config_.text_len) fail("forward: ", y.size(1), " text tokens, the model takes at most ", config_.text_len);
  const auto compute = compute_of(options_);
  y = y.to(options_.device(), compute);
  // Wan reads the text as the encoder left it: its real tokens, then zero rows up to the text length,
  // every row attended (no mask). A mask marks the real tokens: masked rows become those zeros.
  if (a.mask.defined()) {
    at::Tensor m = a.mask;
    while (m.dim() > 2 && m.size(1) == 1) m = m.squeeze(1);
    if (m.dim() == 1) m = m.unsqueeze(0);
    if (m.dim() != 2 || m.size(1) != y.size(1)) fail("forward: the text mask must be [B, L] with L = ", y.size(1));
    y = y * m.to(y.device()).ne(0).expand({B, -1}).unsqueeze(-1).to(compute);
  }
  if (y.size(1) < config_.text_len) y = at::constant_pad_nd(y, {0, 0, 0, config_.text_len - y.size(1)}, 0);
  const auto lin = [&](const at::Tensor& x, const std::string& p) {
    return at::linear(x.to(options_.dtype()), w(p + ".weight"), w(p + ".bias"));
  };
  c->context = lin(at::gelu(lin(y, "condition_embedder.text_embedder.linear_1"), "tanh"),
                   "condition_embedder.text_embedder.linear_2");
  c->caption_tokens = config_.text_len;
  // 3-D RoPE: per axis d_t = D - 2 (D / 6) * 2, d_h = d_w = 2 (D / 6) dimensions; angles in float64.
  const int64_t D = config_.head_dim(), dh = 2 * (D / 6), dt = D - 2 * dh;
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  auto angles = [&](int64_t dim, int64_t n) {  // [n, dim / 2]
    const at::Tensor freqs = 1.0 / at::pow(10000.0, at::arange(0, dim, 2, f64) / static_cast<double>(dim));
    return at::outer(at::arange(n, f64), freqs);
  };
  const TokenGrid& g = c->grid;
  const at::Tensor at_ = angles(dt, g.t).view({g.t, 1, 1, -1}).expand({g.t, g.h, g.w, -1});
  const at::Tensor ah = angles(dh, g.h).view({1, g.h, 1, -1}).expand({g.t, g.h, g.w, -1});
  const at::Tensor aw = angles(dh, g.w).view({1, 1, g.w, -1}).expand({g.t, g.h, g.w, -1});
  const at::Tensor ang = at::cat({at_, ah, aw}, -1).reshape({g.tokens(), D / 2});
  c->rope_cis = at::polar(at::ones_like(ang), ang).to(options_.device(), at::toComplexType(compute)).unsqueeze(1);
  return c;
}

void Wan::set_timestep(DiTContext& ctx, const at::Tensor& timestep) const {
  auto& c = dynamic_cast<WanContext&>(ctx);
  if (!timestep.defined()) fail("forward: input 'timestep' is missing");
  const auto compute = compute_of(options_);
  at::Tensor t = timestep.reshape({-1}).to(options_.device());
  if (t.size(0) != c.batch) {
    if (t.size(0) != 1) fail("forward: timestep has ", t.size(0), " entries for a batch of ", c.batch);
    t = t.expand({c.batch});
  }
  const at::Tensor freq = layers::timestep_embedding(t, config_.freq_dim, compute);
  const auto lin = [&](const at::Tensor& x, const std::string& p) { return at::linear(x, w(p + ".weight"), w(p + ".bias")); };
  // In place (assign_in_place): the tensors keep their storage from step to step.
  assign_in_place(c.temb, lin(at::silu(lin(freq, "condition_embedder.time_embedder.linear_1")),
                              "condition_embedder.time_embedder.linear_2"));
  assign_in_place(c.e0, lin(at::silu(c.temb).to(options_.dtype()), "condition_embedder.time_proj")
                            .to(compute)
                            .unflatten(1, {6, config_.dim}));
  for (int i = 0; i < config_.num_layers; ++i)  // [B, 6, C] -> 6 x [B, 1, C]
    assign_modulation(c.modulation_tables, c.modulation, i, blocks_[i].sst + c.e0, true);
}

at::Tensor Wan::embed(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx) const {
  // Every token's position lives in the RoPE tables, read at attention time: tokens may be any
  // contiguous share of the flattened sequence (the whole video, or a Ulysses shard from `begin`).
  if (begin < 0 || begin + tokens.size(1) * tokens.size(2) > ctx.grid.tokens())
    fail("Wan: tokens [", begin, ", ", begin + tokens.size(1) * tokens.size(2), ") outside the video's ", ctx.grid.tokens());
  return layers::embed_patches(tokens.to(options_), w("patch_embedding.weight"), w("patch_embedding.bias"))
      .to(compute_of(options_));
}

at::Tensor Wan::attention(const AttentionWeights& aw, bool self, const at::Tensor& x, const WanContext& c,
                          AttentionSeam* seam) const {
  const int64_t B = x.size(0), L = x.size(1), C = config_.dim, H = config_.num_heads, D = config_.head_dim();
  const auto lin = [&](const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias) {
    return at::linear(in.to(options_.dtype()), weight, bias);
  };
  const at::Tensor kv_in = self ? x : c.context;
  at::Tensor q = rms(lin(x, aw.q_w, aw.q_b), aw.norm_q, config_.eps).view({B, L, H, D});
  at::Tensor k = rms(lin(kv_in, aw.k_w, aw.k_b), aw.norm_k, config_.eps).view({B, kv_in.size(1), H, D});
  at::Tensor v = lin(kv_in, aw.v_w, aw.v_b).view({B, kv_in.size(1), H, D});
  if (self) {  // this rank's tokens' rows of the tables (q/k were normed across all heads first)
    const int64_t begin = seam ? seam->sequence_begin() : 0;
    if (begin + L > c.rope_cis.size(0)) fail("Wan: tokens [", begin, ", ", begin + L, ") outside the video's ", c.rope_cis.size(0));
    const at::Tensor cis = c.rope_cis.narrow(0, begin, L);
    q = rope(q, cis);
    k = rope(k, cis);
  }
  q = q.transpose(1, 2), k = k.transpose(1, 2), v = v.transpose(1, 2);  // [B, H, L, D]
  const AttentionSeam::Attend attend = [](const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_) {
    return layers::attention(q_, k_, v_);
  };
  at::Tensor o = self && seam ? seam->attention(AttentionScope::Video, q, k, v, attend) : attend(q, k, v);
  return lin(o.transpose(1, 2).reshape({B, L, C}), aw.o_w, aw.o_b);
}

// A unit's branch: its output in the run's dtype (attention or FFN) and the gate it is scaled by
// (undefined: the cross-attention, added as it is).
std::pair<at::Tensor, at::Tensor> Wan::branch(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const {
  const auto& c = dynamic_cast<const WanContext&>(ctx);
  const int block = unit / 3;
  if (static_cast<size_t>(block) >= c.modulation.size()) fail("Wan: the context has no timestep (call set_timestep first)");
  const auto& mod = c.modulation[block];  // shift, scale, gate (self-attention), then the same for the FFN
  const BlockWeights& bw = blocks_[block];
  const auto dtype = options_.dtype().toScalarType();
  switch (unit % 3) {
    case 0:
      return {attention(bw.self_attn, true, layers::modulated_layer_norm(x, mod[0], mod[1], config_.eps, dtype), c, seam),
              mod[2]};
    case 1: {
      const at::Tensor n = config_.cross_attn_norm
                               ? at::layer_norm(x, {config_.dim}, bw.norm2_w, bw.norm2_b, config_.eps)
                               : x;
      return {attention(bw.cross_attn, false, n, c, seam), at::Tensor()};
    }
    default: {
      const at::Tensor h = layers::modulated_layer_norm(x, mod[3], mod[4], config_.eps, dtype);
      return {layers::mlp(h, bw.fc1_w, bw.fc1_b, bw.fc2_w, bw.fc2_b), mod[5]};
    }
  }
}

at::Tensor Wan::unit_residual(int unit, const at::Tensor& x4, const DiTContext& ctx, AttentionSeam* seam) const {
  const auto compute = compute_of(options_);
  const at::Tensor x = x4.reshape({x4.size(0), x4.size(1) * x4.size(2), x4.size(3)}).to(compute);
  const auto [out, gate] = branch(unit, x, ctx, seam);
  const at::Tensor r = out.to(compute);
  return (gate.defined() ? r.mul_(gate) : r).view(x4.sizes());
}

at::Tensor Wan::unit_apply(int unit, const at::Tensor& x4, const DiTContext& ctx, AttentionSeam* seam) const {
  const auto compute = compute_of(options_);
  const at::Tensor x = x4.reshape({x4.size(0), x4.size(1) * x4.size(2), x4.size(3)}).to(compute);
  const auto [out, gate] = branch(unit, x, ctx, seam);
  // One pass: the branch's output read in its dtype, gated and added in the compute dtype.
  return (gate.defined() ? at::addcmul(x, out, gate) : at::add(x, out)).view(x4.sizes());
}

at::Tensor Wan::head(const at::Tensor& x4, const DiTContext& ctx) const {
  const auto& c = dynamic_cast<const WanContext&>(ctx);
  const auto compute = compute_of(options_);
  const at::Tensor m = w("scale_shift_table") + c.temb.unsqueeze(1);  // [B, 2, C]: the head reads e, not e0
  const at::Tensor shift = m.select(1, 0).unsqueeze(1).unsqueeze(1), scale = m.select(1, 1).unsqueeze(1).unsqueeze(1);
  const at::Tensor h = layers::modulate(at::layer_norm(x4.to(compute), {config_.dim}, {}, {}, config_.eps), shift, scale);
  return at::linear(h, w("proj_out.weight"), w("proj_out.bias"));
}

at::Tensor Wan::probe(ProbeSignal, const at::Tensor&, const DiTContext& ctx) const {
  return dynamic_cast<const WanContext&>(ctx).e0.clone();  // e0 is rewritten in place by the next step
}

void Wan::check_layout(const std::string& layout, int ranks, const TokenGrid& grid) const {
  if (layout != "ulysses" && layout != "kv-gather")
    fail("Wan runs sequence parallelism as Ulysses or kv-gather, not '", layout, "'");
  if (layout == "ulysses" && ranks > config_.num_heads)
    fail("--sp ", ranks, ": Ulysses needs an attention head per rank and the model has ", config_.num_heads,
         " (up to ", config_.num_heads, " ranks; beyond, the kv-gather layout)");
  if (ranks > grid.tokens()) fail("--sp ", ranks, " is more ranks than the ", grid.tokens(), " tokens of this video");
}

void Wan::observe_context(const DiTContext& ctx, const Observer& observe) const {
  const auto& c = dynamic_cast<const WanContext&>(ctx);
  observe("temb", c.temb);
  observe("timestep_proj", c.e0.flatten(1));
  observe("encoder_hidden_states", c.context);
}

double Wan::unit_flops(int unit, const TokenGrid& g, int64_t batch, int64_t caption_tokens) const {
  const double C = config_.dim, L = static_cast<double>(g.tokens()), N = batch * L, Lt = static_cast<double>(caption_tokens);
  switch (unit % 3) {
    case 0: return N * 2 * 4 * C * C + 4.0 * batch * L * L * C;
    case 1: return N * 2 * 2 * C * C + 2.0 * batch * Lt * 2 * C * C + 4.0 * N * Lt * C;
    default: return N * 2 * 2 * C * config_.ffn_dim;
  }
}

double Wan::forward_flops(const TokenGrid& g, int64_t batch, int64_t caption_tokens) const {
  double f = 0;
  for (int u = 0; u < unit_count(); ++u) f += unit_flops(u, g, batch, caption_tokens);
  const double N = static_cast<double>(batch) * g.tokens(), C = config_.dim;
  f += 2.0 * N * C * config_.in_channels * config_.patch_volume() + 2.0 * N * C * config_.patch_volume() * config_.out_channels;
  f += 2.0 * batch * config_.text_len * (config_.text_dim * C + C * C);
  return f;
}

}  // namespace ditto
