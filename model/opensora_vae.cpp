// Open-Sora 1.2's VAE decoder (see opensora_vae.h).
#include "model/opensora_vae.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

int OpenSoraVaeConfig::time_factor() const {
  int f = 1;
  for (bool t : temporal_downsample) f *= t ? 2 : 1;
  return f;
}

int OpenSoraVaeConfig::chunk_latents() const { return (micro_frame_size + time_factor() - 1) / time_factor(); }

bool is_opensora_vae_config(const nlohmann::json& j) {
  if (!j.is_object()) return false;
  if (j.contains("model_type") && j["model_type"] == "VideoAutoencoderPipeline") return true;
  if (j.contains("architectures") && j["architectures"].is_array())
    for (const auto& a : j["architectures"])
      if (a == "VideoAutoencoderPipeline") return true;
  return false;
}

OpenSoraVaeConfig parse_opensora_vae_config(const nlohmann::json& j, const std::string& where) {
  if (!is_opensora_vae_config(j)) fail("'", where, "': not Open-Sora's VideoAutoencoderPipeline (model_type)");
  OpenSoraVaeConfig c;
  const auto get = [&](const nlohmann::json& o, const char* key, auto& out, const std::string& in) {
    config_field(o, key, out, "'" + where + "'" + in);
  };
  get(j, "micro_frame_size", c.micro_frame_size, "");
  get(j, "scale", c.scale, "");
  get(j, "shift", c.shift, "");
  if (j.contains("vae_temporal") && j["vae_temporal"].is_object()) {
    const auto& t = j["vae_temporal"];
    const std::string in = " vae_temporal";
    std::string type = "VAE_Temporal_SD";
    get(t, "type", type, in);
    if (type != "VAE_Temporal_SD" && type != "VAE_Temporal")
      fail("'", where, "', vae_temporal: type '", type, "' is not Open-Sora 1.2's temporal VAE (VAE_Temporal_SD)");
    get(t, "in_out_channels", c.channels, in);
    get(t, "filters", c.filters, in);
    get(t, "num_res_blocks", c.num_res_blocks, in);
    get(t, "num_groups", c.num_groups, in);
    get(t, "channel_multipliers", c.channel_multipliers, in);
    get(t, "temporal_downsample", c.temporal_downsample, in);
  }
  if (j.contains("vae_2d") && j["vae_2d"].is_object()) {
    const auto& s = j["vae_2d"];
    const std::string in = " vae_2d";
    get(s, "block_out_channels", c.block_out_channels, in);
    get(s, "layers_per_block", c.layers_per_block, in);
    get(s, "norm_num_groups", c.norm_num_groups, in);
    get(s, "latent_channels", c.latent_channels, in);
  }
  const auto bad = [&](const auto&... what) { fail("'", where, "': ", what...); };
  try {
    check_config_size("micro_frame_size", c.micro_frame_size, 4096);
    check_config_size("in_out_channels", c.channels, 1024);
    check_config_size("filters", c.filters, 8192);
    check_config_size("num_res_blocks", c.num_res_blocks, 64);
    check_config_size("num_groups", c.num_groups, 1024);
    check_config_size("channel_multipliers length", static_cast<long long>(c.channel_multipliers.size()), 8);
    for (int m : c.channel_multipliers) check_config_size("channel_multipliers", m, 64);
    check_config_size("block_out_channels length", static_cast<long long>(c.block_out_channels.size()), 8);
    for (int m : c.block_out_channels) check_config_size("block_out_channels", m, 8192);
    check_config_size("layers_per_block", c.layers_per_block, 64);
    check_config_size("norm_num_groups", c.norm_num_groups, 1024);
    check_config_size("latent_channels", c.latent_channels, 1024);
  } catch (const Error& e) {
    bad(e.what());
  }
  if (c.temporal_downsample.size() + 1 != c.channel_multipliers.size())
    bad("vae_temporal: temporal_downsample has ", c.temporal_downsample.size(), " entries for ", c.channel_multipliers.size(), " stages");
  for (int m : c.channel_multipliers)
    if (c.filters * m % c.num_groups) bad("vae_temporal: ", c.filters * m, " channels do not split into ", c.num_groups, " groups");
  for (int m : c.block_out_channels)
    if (m % c.norm_num_groups) bad("vae_2d: ", m, " channels do not split into ", c.norm_num_groups, " groups");
  if (c.channels != c.latent_channels)
    bad("the temporal VAE's ", c.channels, " channels are not the 2-D VAE's ", c.latent_channels, " latent channels");
  if (static_cast<int>(c.scale.size()) != c.channels || static_cast<int>(c.shift.size()) != c.channels)
    bad("scale and shift must have ", c.channels, " values (got ", c.scale.size(), " and ", c.shift.size(), ")");
  for (double s : c.scale)
    if (!(s != 0)) bad("scale must not be 0");
  return c;
}

namespace {

void add_conv(std::vector<ParamSpec>& s, const std::string& name, std::vector<int64_t> shape, bool bias) {
  s.push_back({name + ".weight", shape});
  if (bias) s.push_back({name + ".bias", {shape[0]}});
}

void add_norm(std::vector<ParamSpec>& s, const std::string& name, int64_t c) {
  s.push_back({name + ".weight", {c}});
  s.push_back({name + ".bias", {c}});
}

// The temporal decoder's stages from the top: (in, out) channels of each stage's residual blocks.
struct TemporalStage {
  int64_t in, out;
  bool up;  // a causal convolution doubling the channels, then depth-to-space in time
};

std::vector<TemporalStage> temporal_stages(const OpenSoraVaeConfig& c) {
  std::vector<TemporalStage> s(c.channel_multipliers.size());
  int64_t prev = static_cast<int64_t>(c.filters) * c.channel_multipliers.back();
  for (int i = static_cast<int>(s.size()) - 1; i >= 0; --i) {
    const int64_t f = static_cast<int64_t>(c.filters) * c.channel_multipliers[i];
    s[i] = {prev, f, i > 0 && c.temporal_downsample[i - 1]};
    prev = f;
  }
  return s;
}

void add_temporal_res(std::vector<ParamSpec>& s, const std::string& n, int64_t in, int64_t out) {
  add_norm(s, n + ".norm1", in);
  add_conv(s, n + ".conv1.conv", {out, in, 3, 3, 3}, false);
  add_norm(s, n + ".norm2", out);
  add_conv(s, n + ".conv2.conv", {out, out, 3, 3, 3}, false);
  if (in != out) add_conv(s, n + ".conv3.conv", {out, in, 1, 1, 1}, false);
}

void add_spatial_res(std::vector<ParamSpec>& s, const std::string& n, int64_t in, int64_t out) {
  add_norm(s, n + ".norm1", in);
  add_conv(s, n + ".conv1", {out, in, 3, 3}, true);
  add_norm(s, n + ".norm2", out);
  add_conv(s, n + ".conv2", {out, out, 3, 3}, true);
  if (in != out) add_conv(s, n + ".conv_shortcut", {out, in, 1, 1}, true);
}

const char* kTemporal = "temporal_vae.";
const char* kSpatial = "spatial_vae.module.";

}  // namespace

std::vector<ParamSpec> opensora_vae_decoder_specs(const OpenSoraVaeConfig& c) {
  std::vector<ParamSpec> s;
  const std::string t = kTemporal, d = t + "decoder.";
  const int64_t C = c.channels;
  add_conv(s, t + "post_quant_conv.conv", {C, C, 1, 1, 1}, true);
  const auto stages = temporal_stages(c);
  const int64_t top = stages.back().in;
  add_conv(s, d + "conv1.conv", {top, C, 3, 3, 3}, true);
  for (int j = 0; j < c.num_res_blocks; ++j) add_temporal_res(s, d + "res_blocks." + std::to_string(j), top, top);
  for (size_t i = 0; i < stages.size(); ++i) {
    for (int j = 0; j < c.num_res_blocks; ++j)
      add_temporal_res(s, d + "block_res_blocks." + std::to_string(i) + "." + std::to_string(j), j ? stages[i].out : stages[i].in,
                       stages[i].out);
    if (stages[i].up) add_conv(s, d + "conv_blocks." + std::to_string(i - 1) + ".conv", {2 * stages[i].out, stages[i].out, 3, 3, 3}, true);
  }
  add_norm(s, d + "norm1", stages.front().out);
  add_conv(s, d + "conv_out.conv", {C, stages.front().out, 3, 3, 3}, true);

  const std::string m = kSpatial, sd = m + "decoder.";
  const int64_t L = c.latent_channels;
  const auto& ch = c.block_out_channels;
  const int64_t big = ch.back();
  add_conv(s, m + "post_quant_conv", {L, L, 1, 1}, true);
  add_conv(s, sd + "conv_in", {big, L, 3, 3}, true);
  add_spatial_res(s, sd + "mid_block.resnets.0", big, big);
  const std::string a = sd + "mid_block.attentions.0.";
  add_norm(s, a + "group_norm", big);
  for (const char* p : {"to_q", "to_k", "to_v", "to_out.0"}) add_conv(s, a + p, {big, big}, true);
  add_spatial_res(s, sd + "mid_block.resnets.1", big, big);
  int64_t prev = big;
  for (size_t i = 0; i < ch.size(); ++i) {
    const int64_t out = ch[ch.size() - 1 - i];
    const std::string b = sd + "up_blocks." + std::to_string(i) + ".";
    for (int j = 0; j <= c.layers_per_block; ++j) add_spatial_res(s, b + "resnets." + std::to_string(j), j ? out : prev, out);
    if (i + 1 < ch.size()) add_conv(s, b + "upsamplers.0.conv", {out, out, 3, 3}, true);
    prev = out;
  }
  add_norm(s, sd + "conv_norm_out", ch.front());
  add_conv(s, sd + "conv_out", {3, ch.front(), 3, 3}, true);
  return s;
}

OpenSoraVae::OpenSoraVae(OpenSoraVaeConfig config, std::map<std::string, at::Tensor> weights, const at::TensorOptions& options)
    : config_(std::move(config)), weights_(std::move(weights)), options_(options) {
  check_weights(opensora_vae_decoder_specs(config_), weights_, "Open-Sora VAE");
}

std::shared_ptr<OpenSoraVae> OpenSoraVae::from_pretrained(const std::string& dir, const at::TensorOptions& options) {
  const std::string where = dir + "/config.json";
  const OpenSoraVaeConfig c = parse_opensora_vae_config(read_json_file(where, "VAE config"), where);
  const Checkpoint ck = Checkpoint::open(dir, {"model"});
  // The encoders are not needed to decode; scale and shift are the config's (the buffers hold the same).
  const auto rename = [](const std::string& name) -> std::string {
    for (const char* skip : {"temporal_vae.encoder.", "temporal_vae.quant_conv.", "spatial_vae.module.encoder.",
                             "spatial_vae.module.quant_conv."})
      if (name.rfind(skip, 0) == 0) return "";
    if (name == "scale" || name == "shift") return "";
    return name;
  };
  std::ostringstream described;
  described << "Open-Sora VAE decoder: temporal filters=" << c.filters << " x (";
  for (size_t i = 0; i < c.channel_multipliers.size(); ++i) described << (i ? "," : "") << c.channel_multipliers[i];
  described << "), num_res_blocks=" << c.num_res_blocks << "; 2-D block_out_channels=(";
  for (size_t i = 0; i < c.block_out_channels.size(); ++i) described << (i ? "," : "") << c.block_out_channels[i];
  described << "), layers_per_block=" << c.layers_per_block;
  return std::make_shared<OpenSoraVae>(c, load_strict(ck, opensora_vae_decoder_specs(c), options, described.str(), rename),
                                       options);
}

const at::Tensor& OpenSoraVae::w(const std::string& name) const { return weight_named(weights_, name, "Open-Sora VAE"); }

// Zero frames in front (kernel - 1), zero padding in space.
at::Tensor OpenSoraVae::causal_conv(const at::Tensor& x, const std::string& name) const {
  const at::Tensor& weight = w(name + ".weight");
  const int64_t kt = weight.size(2), ks = weight.size(3);
  const at::Tensor in = kt > 1 ? at::constant_pad_nd(x, {0, 0, 0, 0, kt - 1, 0}) : x;
  const auto bias = weights_.find(name + ".bias");
  return at::conv3d(in, weight, bias == weights_.end() ? at::Tensor() : bias->second, 1, {0, ks / 2, ks / 2});
}

at::Tensor OpenSoraVae::temporal_res(const at::Tensor& x, const std::string& n) const {
  const int g = config_.num_groups;
  at::Tensor h = at::silu(at::group_norm(x, g, w(n + ".norm1.weight"), w(n + ".norm1.bias"), 1e-5));
  h = causal_conv(h, n + ".conv1.conv");
  h = at::silu(at::group_norm(h, g, w(n + ".norm2.weight"), w(n + ".norm2.bias"), 1e-5));
  h = causal_conv(h, n + ".conv2.conv");
  return h.add_(weights_.count(n + ".conv3.conv.weight") ? causal_conv(x, n + ".conv3.conv") : x);
}

at::Tensor OpenSoraVae::temporal_decode(const at::Tensor& chunk, int n) const {
  const std::string d = std::string(kTemporal) + "decoder.";
  at::Tensor x = causal_conv(chunk.to(options_.dtype()), std::string(kTemporal) + "post_quant_conv.conv");
  x = causal_conv(x, d + "conv1.conv");
  for (int j = 0; j < config_.num_res_blocks; ++j) x = temporal_res(x, d + "res_blocks." + std::to_string(j));
  const auto stages = temporal_stages(config_);
  for (int i = static_cast<int>(stages.size()) - 1; i >= 0; --i) {
    for (int j = 0; j < config_.num_res_blocks; ++j)
      x = temporal_res(x, d + "block_res_blocks." + std::to_string(i) + "." + std::to_string(j));
    if (stages[i].up) {
      x = causal_conv(x, d + "conv_blocks." + std::to_string(i - 1) + ".conv");
      // B (C ts) T H W -> B C (T ts) H W with ts = 2: channel c * 2 + s becomes frame t * 2 + s of channel c.
      const int64_t B = x.size(0), C = x.size(1) / 2, T = x.size(2), H = x.size(3), W = x.size(4);
      x = x.view({B, C, 2, T, H, W}).permute({0, 1, 3, 2, 4, 5}).reshape({B, C, 2 * T, H, W});
    }
  }
  x = at::silu(at::group_norm(x, config_.num_groups, w(d + "norm1.weight"), w(d + "norm1.bias"), 1e-5));
  x = causal_conv(x, d + "conv_out.conv");
  const int f = config_.time_factor();
  const int64_t drop = (f - n % f) % f;  // the padding frames the encoder put in front
  if (x.size(2) - drop != n) fail("Open-Sora VAE: ", chunk.size(2), " latent frames do not decode into ", n, " frames");
  return x.narrow(2, drop, n);
}

at::Tensor OpenSoraVae::spatial_res(const at::Tensor& x, const std::string& n) const {
  const int g = config_.norm_num_groups;
  at::Tensor h = at::silu(at::group_norm(x, g, w(n + ".norm1.weight"), w(n + ".norm1.bias"), 1e-6));
  h = at::conv2d(h, w(n + ".conv1.weight"), w(n + ".conv1.bias"), 1, 1);
  h = at::silu(at::group_norm(h, g, w(n + ".norm2.weight"), w(n + ".norm2.bias"), 1e-6));
  h = at::conv2d(h, w(n + ".conv2.weight"), w(n + ".conv2.bias"), 1, 1);
  const bool project = weights_.count(n + ".conv_shortcut.weight") > 0;
  return h.add_(project ? at::conv2d(x, w(n + ".conv_shortcut.weight"), w(n + ".conv_shortcut.bias")) : x);
}

// diffusers' Attention as the VAE uses it: GroupNorm, one head over the pixels, a residual.
at::Tensor OpenSoraVae::spatial_attention(const at::Tensor& x, const std::string& n) const {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor h = at::group_norm(x, config_.norm_num_groups, w(n + "group_norm.weight"), w(n + "group_norm.bias"), 1e-6)
                           .view({B, C, H * W})
                           .transpose(1, 2);
  const auto proj = [&](const char* p) { return at::linear(h, w(n + p + ".weight"), w(n + p + ".bias")).unsqueeze(1); };
  const at::Tensor o = at::scaled_dot_product_attention(proj("to_q"), proj("to_k"), proj("to_v")).squeeze(1);
  return at::linear(o, w(n + "to_out.0.weight"), w(n + "to_out.0.bias")).transpose(1, 2).reshape({B, C, H, W}).add(x);
}

at::Tensor OpenSoraVae::spatial_decode(const at::Tensor& frames) const {
  const std::string m = kSpatial, sd = m + "decoder.";
  at::Tensor x = at::conv2d(frames.to(options_.dtype()), w(m + "post_quant_conv.weight"), w(m + "post_quant_conv.bias"));
  x = at::conv2d(x, w(sd + "conv_in.weight"), w(sd + "conv_in.bias"), 1, 1);
  x = spatial_res(x, sd + "mid_block.resnets.0");
  x = spatial_attention(x, sd + "mid_block.attentions.0.");
  x = spatial_res(x, sd + "mid_block.resnets.1");
  const size_t n = config_.block_out_channels.size();
  for (size_t i = 0; i < n; ++i) {
    const std::string b = sd + "up_blocks." + std::to_string(i) + ".";
    for (int j = 0; j <= config_.layers_per_block; ++j) x = spatial_res(x, b + "resnets." + std::to_string(j));
    if (i + 1 < n) {
      x = at::upsample_nearest2d(x, {2 * x.size(2), 2 * x.size(3)});
      x = at::conv2d(x, w(b + "upsamplers.0.conv.weight"), w(b + "upsamplers.0.conv.bias"), 1, 1);
    }
  }
  x = at::silu(at::group_norm(x, config_.norm_num_groups, w(sd + "conv_norm_out.weight"), w(sd + "conv_norm_out.bias"), 1e-6));
  return at::conv2d(x, w(sd + "conv_out.weight"), w(sd + "conv_out.bias"), 1, 1);
}

LatentShape OpenSoraVae::latent_shape(int frames, int height, int width) const {
  if (frames <= 0 || height <= 0 || width <= 0)
    fail("frames, height and width must be positive (got ", frames, "x", height, "x", width, ")");
  const int f = config_.spatial_factor(), m = config_.micro_frame_size, tf = config_.time_factor();
  if (height < f || width < f) fail("height and width must be at least ", f, " pixels for the Open-Sora VAE");
  return {config_.channels, frames / m * config_.chunk_latents() + (frames % m + tf - 1) / tf, height / f, width / f};
}

int OpenSoraVae::frames_of(const at::Tensor& latent, int frames) const {
  const int64_t T = latent.size(2), q = T / config_.chunk_latents(), r = T % config_.chunk_latents();
  const int most = static_cast<int>(q * config_.micro_frame_size + r * config_.time_factor());
  if (frames <= 0) return most;
  if (latent_shape(frames, config_.spatial_factor(), config_.spatial_factor()).frames != T)
    fail("Open-Sora VAE: ", T, " latent frames are not a video of ", frames, " frames (it would have ",
         latent_shape(frames, config_.spatial_factor(), config_.spatial_factor()).frames, ")");
  return frames;
}

int OpenSoraVae::parts(const at::Tensor& latent) const {
  return static_cast<int>((latent.size(2) + config_.chunk_latents() - 1) / config_.chunk_latents());
}

int OpenSoraVae::chunk_frames(const at::Tensor& latent, int k, int frames) const {
  const int total = frames_of(latent, frames);
  return std::min(config_.micro_frame_size, total - k * config_.micro_frame_size);
}

std::vector<int64_t> OpenSoraVae::part_shape(const at::Tensor& latent, int k, int frames) const {
  const int f = config_.spatial_factor();
  return {latent.size(0), 3, chunk_frames(latent, k, frames), latent.size(3) * f, latent.size(4) * f};
}

// One chunk: scaled back, through the temporal VAE, then every frame through the 2-D decoder.
at::Tensor OpenSoraVae::decode_part(const at::Tensor& latent, int k, int frames) const {
  if (latent.dim() != 5 || latent.size(1) != config_.channels)
    fail("Open-Sora VAE: the latent must be [B, ", config_.channels, ", T, H, W], got ", shape_string(latent.sizes()));
  if (k < 0 || k >= parts(latent)) fail("Open-Sora VAE: no chunk ", k);
  const int64_t L = config_.chunk_latents(), t0 = k * L;
  const int n = chunk_frames(latent, k, frames);
  // z * scale + shift in the VAE's dtype, the constants rounded to float32 first (the reference's buffers).
  const auto table = [&](const std::vector<double>& v) {
    return at::tensor(v, at::kDouble).to(at::kFloat).to(options_.device(), options_.dtype()).view({1, -1, 1, 1, 1});
  };
  at::Tensor z = latent.narrow(2, t0, std::min(L, latent.size(2) - t0)).to(options_.device(), options_.dtype());
  z = z * table(config_.scale) + table(config_.shift);
  const at::Tensor xz = temporal_decode(z, n);  // [B, C, n, h, w]
  const int64_t B = xz.size(0), C = xz.size(1), h = xz.size(3), wd = xz.size(4);
  const at::Tensor flat = xz.permute({0, 2, 1, 3, 4}).reshape({B * n, C, h, wd}) / 0.18215;
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < B * n; i += 4) out.push_back(spatial_decode(flat.narrow(0, i, std::min<int64_t>(4, B * n - i))));
  const at::Tensor x = at::cat(out, 0);
  return x.view({B, n, 3, x.size(2), x.size(3)}).permute({0, 2, 1, 3, 4}).to(at::kFloat).contiguous();
}

at::Tensor OpenSoraVae::join_parts(std::vector<at::Tensor> parts, const at::Tensor&) const {
  return (parts.size() == 1 ? parts[0] : at::cat(parts, 2)).clamp(-1, 1);
}

at::Tensor OpenSoraVae::decode_unclamped(const at::Tensor& latent, int frames) const {
  std::vector<at::Tensor> out;
  for (int k = 0; k < parts(latent); ++k) out.push_back(decode_part(latent, k, frames));
  return out.size() == 1 ? out[0] : at::cat(out, 2);
}

at::Tensor OpenSoraVae::decode(const at::Tensor& latent, int frames) const { return decode_unclamped(latent, frames).clamp(-1, 1); }

}  // namespace ditto
