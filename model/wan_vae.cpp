// Wan-VAE 2.1's decoder (see wan_vae.h).
#include "model/wan_vae.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

int WanVaeConfig::temporal_factor() const {
  int f = 1;
  for (bool t : temporal_downsample) f *= t ? 2 : 1;
  return f;
}

int WanVaeConfig::spatial_factor() const { return 1 << (static_cast<int>(dim_mult.size()) - 1); }

WanVaeConfig wan_vae_builtin_config(const std::string& name) {
  WanVaeConfig c;
  if (name == "wan2.1") {
    c.latents_mean = {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503, -0.2921};
    c.latents_std = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};
    return c;
  }
  if (name == "wan-tiny") {
    c.base_dim = 4, c.z_dim = 4;
    c.latents_mean.assign(4, 0.0);
    c.latents_std.assign(4, 1.0);
    return c;
  }
  fail("unknown VAE config '", name, "' (wan2.1, wan-tiny)");
}

WanVaeConfig parse_wan_vae_config(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail("'", where, "': the config is not a JSON object");
  WanVaeConfig c;
  auto get = [&](const char* key, auto& out) { config_field(j, key, out, "'" + where + "'"); };
  get("base_dim", c.base_dim);
  get("decoder_base_dim", c.decoder_base_dim);
  get("z_dim", c.z_dim);
  get("num_res_blocks", c.num_res_blocks);
  get("in_channels", c.in_channels);
  get("out_channels", c.out_channels);
  get("dim_mult", c.dim_mult);
  get("temperal_downsample", c.temporal_downsample);  // diffusers' spelling
  std::vector<double> attn_scales;
  get("attn_scales", attn_scales);
  bool is_residual = false;
  get("is_residual", is_residual);
  get("latents_mean", c.latents_mean);
  get("latents_std", c.latents_std);
  const auto bad = [&](const auto&... what) { fail("'", where, "': ", what...); };
  if (is_residual || (j.contains("patch_size") && !j["patch_size"].is_null()))
    bad("a residual VAE with patch_size (Wan 2.2 TI2V-5B's) is not supported yet; ditto decodes Wan-VAE 2.1 (Wan 2.1, Wan 2.2 A14B)");
  if (!attn_scales.empty()) bad("attn_scales must be empty (the decoder has no attention at scales; got ", attn_scales.size(), ")");
  try {
    check_config_size("base_dim", c.base_dim, 4096);
    if (c.decoder_base_dim) check_config_size("decoder_base_dim", c.decoder_base_dim, 4096);
    check_config_size("z_dim", c.z_dim, 1024);
    check_config_size("num_res_blocks", c.num_res_blocks, 64);
    check_config_size("out_channels", c.out_channels, 64);
    check_config_size("dim_mult length", static_cast<long long>(c.dim_mult.size()), 8);
    for (int m : c.dim_mult) check_config_size("dim_mult", m, 64);
  } catch (const Error& e) {
    bad(e.what());
  }
  if (c.temporal_downsample.size() + 1 != c.dim_mult.size())
    bad("temperal_downsample has ", c.temporal_downsample.size(), " entries; dim_mult's ", c.dim_mult.size(), " stages need ",
        c.dim_mult.size() - 1);
  for (size_t i = 1; i < c.dim_mult.size(); ++i)
    if (c.dim_mult[i] * c.decoder_dim() % 2) bad("the decoder's width at stage ", i, " is odd (", c.dim_mult[i] * c.decoder_dim(), ")");
  if (c.latents_mean.empty()) c.latents_mean.assign(c.z_dim, 0.0);
  if (c.latents_std.empty()) c.latents_std.assign(c.z_dim, 1.0);
  if (static_cast<int>(c.latents_mean.size()) != c.z_dim || static_cast<int>(c.latents_std.size()) != c.z_dim)
    bad("latents_mean and latents_std must have z_dim = ", c.z_dim, " values (got ", c.latents_mean.size(), " and ",
        c.latents_std.size(), ")");
  for (double s : c.latents_std)
    if (!(s > 0)) bad("latents_std must be positive, got ", s);
  int sf = 0, tf = 0;
  get("scale_factor_spatial", sf);
  get("scale_factor_temporal", tf);
  if (sf && sf != c.spatial_factor()) bad("scale_factor_spatial is ", sf, " but the stages give ", c.spatial_factor());
  if (tf && tf != c.temporal_factor()) bad("scale_factor_temporal is ", tf, " but the stages give ", c.temporal_factor());
  return c;
}

namespace {

// The decoder's stages as diffusers builds them (WanDecoder3d with is_residual false).
struct UpStage {
  int64_t in, out;
  bool up, temporal;
};

std::vector<UpStage> up_stages(const WanVaeConfig& c) {
  const int64_t d = c.decoder_dim();
  std::vector<int64_t> dims = {d * c.dim_mult.back()};
  for (auto it = c.dim_mult.rbegin(); it != c.dim_mult.rend(); ++it) dims.push_back(d * *it);
  const size_t n = c.dim_mult.size();
  std::vector<UpStage> s;
  for (size_t i = 0; i < n; ++i) {
    const bool up = i + 1 != n;
    // temperal_upsample = temperal_downsample reversed
    const bool temporal = up && c.temporal_downsample[c.temporal_downsample.size() - 1 - i];
    s.push_back({i > 0 ? dims[i] / 2 : dims[i], dims[i + 1], up, temporal});
  }
  return s;
}

void add_conv3d(std::vector<ParamSpec>& s, const std::string& name, int64_t out, int64_t in, int64_t kt, int64_t k) {
  s.push_back({name + ".weight", {out, in, kt, k, k}});
  s.push_back({name + ".bias", {out}});
}

void add_residual(std::vector<ParamSpec>& s, const std::string& name, int64_t in, int64_t out) {
  s.push_back({name + ".norm1.gamma", {in, 1, 1, 1}});
  add_conv3d(s, name + ".conv1", out, in, 3, 3);
  s.push_back({name + ".norm2.gamma", {out, 1, 1, 1}});
  add_conv3d(s, name + ".conv2", out, out, 3, 3);
  if (in != out) add_conv3d(s, name + ".conv_shortcut", out, in, 1, 1);
}

}  // namespace

std::vector<ParamSpec> wan_vae_decoder_specs(const WanVaeConfig& c) {
  std::vector<ParamSpec> s;
  const int64_t z = c.z_dim;
  add_conv3d(s, "post_quant_conv", z, z, 1, 1);
  const std::vector<UpStage> stages = up_stages(c);
  const int64_t top = stages.front().in;
  add_conv3d(s, "decoder.conv_in", top, z, 3, 3);
  add_residual(s, "decoder.mid_block.resnets.0", top, top);
  const std::string a = "decoder.mid_block.attentions.0";
  s.push_back({a + ".norm.gamma", {top, 1, 1}});
  s.push_back({a + ".to_qkv.weight", {3 * top, top, 1, 1}});
  s.push_back({a + ".to_qkv.bias", {3 * top}});
  s.push_back({a + ".proj.weight", {top, top, 1, 1}});
  s.push_back({a + ".proj.bias", {top}});
  add_residual(s, "decoder.mid_block.resnets.1", top, top);
  for (size_t i = 0; i < stages.size(); ++i) {
    const std::string b = "decoder.up_blocks." + std::to_string(i);
    for (int j = 0; j <= c.num_res_blocks; ++j)
      add_residual(s, b + ".resnets." + std::to_string(j), j ? stages[i].out : stages[i].in, stages[i].out);
    if (!stages[i].up) continue;
    const int64_t d = stages[i].out;
    s.push_back({b + ".upsamplers.0.resample.1.weight", {d / 2, d, 3, 3}});
    s.push_back({b + ".upsamplers.0.resample.1.bias", {d / 2}});
    if (stages[i].temporal) add_conv3d(s, b + ".upsamplers.0.time_conv", 2 * d, d, 3, 1);
  }
  s.push_back({"decoder.norm_out.gamma", {stages.back().out, 1, 1, 1}});
  add_conv3d(s, "decoder.conv_out", c.out_channels, stages.back().out, 3, 3);
  return s;
}

LatentShape wan_latent_shape(int channels, int frames, int height, int width) {
  if (frames <= 0 || (frames - 1) % 4) fail("Wan videos have 4k + 1 frames (81, 49, 17, ...), got ", frames);
  if (height <= 0 || width <= 0 || height % 16 || width % 16)
    fail("Wan videos are multiples of 16 pixels high and wide (the VAE's 8x and the 2x2 patches), got ", height, "x", width);
  return {channels, (frames - 1) / 4 + 1, height / 8, width / 8};
}

WanVaeDecoder::WanVaeDecoder(WanVaeConfig config, std::map<std::string, at::Tensor> weights, const at::TensorOptions& options)
    : config_(std::move(config)), weights_(std::move(weights)), options_(options) {
  check_weights(wan_vae_decoder_specs(config_), weights_, "Wan-VAE");
}

WanVaeDecoder WanVaeDecoder::from_pretrained(const std::string& dir, const at::TensorOptions& options) {
  const std::string where = dir + "/config.json";
  const nlohmann::json j = read_json_file(where, "VAE config");
  if (j.is_object() && j.contains("_class_name") && j["_class_name"] != "AutoencoderKLWan")
    fail("'", where, "': _class_name is ", dump_json(j["_class_name"]), ", not AutoencoderKLWan");
  const WanVaeConfig c = parse_wan_vae_config(j, where);
  const Checkpoint ck = Checkpoint::open(dir, {"diffusion_pytorch_model", "model"});
  // The encoder is not needed to decode.
  const auto rename = [](const std::string& name) -> std::string {
    if (name.rfind("encoder.", 0) == 0 || name.rfind("quant_conv.", 0) == 0) return "";
    return name;
  };
  std::ostringstream described;
  described << "Wan-VAE decoder: base_dim=" << c.decoder_dim() << ", z_dim=" << c.z_dim << ", num_res_blocks=" << c.num_res_blocks
            << ", " << c.dim_mult.size() << " stages";
  return WanVaeDecoder(c, load_strict(ck, wan_vae_decoder_specs(c), options, described.str(), rename), options);
}

WanVaeDecoder WanVaeDecoder::random(const WanVaeConfig& config, uint64_t seed, const at::TensorOptions& options) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  std::map<std::string, at::Tensor> weights;
  for (const ParamSpec& p : wan_vae_decoder_specs(config)) {
    at::Tensor t;
    if (p.name.size() > 6 && p.name.compare(p.name.size() - 6, 6, ".gamma") == 0) t = at::ones(p.shape, f32);
    else if (p.shape.size() == 1) t = at::zeros(p.shape, f32);
    else {
      int64_t fan_in = 1;
      for (size_t d = 1; d < p.shape.size(); ++d) fan_in *= p.shape[d];
      t = at::randn(p.shape, gen, f32) / std::sqrt(static_cast<double>(fan_in));
    }
    weights[p.name] = t.to(options);
  }
  return WanVaeDecoder(config, std::move(weights), options);
}

const at::Tensor& WanVaeDecoder::w(const std::string& name) const { return weight_named(weights_, name, "Wan-VAE"); }

// Every causal convolution's last two input frames, in the order the decoder runs them.
struct WanVaeDecoder::Stream {
  std::vector<at::Tensor> carried;
  size_t slot = 0;
  bool clip_start = true;  // the chunk holds the clip's first latent frame
  at::Tensor& next() {
    if (slot == carried.size()) carried.emplace_back();
    return carried[slot++];
  }
};

// A causal convolution: zero frames in front (kernel - 1 of them, fewer by the frames carried from
// the previous chunk in `carried`, which then holds the last two input frames), zero padding in space.
at::Tensor WanVaeDecoder::causal_conv(const at::Tensor& x, const std::string& name, at::Tensor* carried) const {
  const at::Tensor& weight = w(name + ".weight");
  const int64_t kt = weight.size(2), ks = weight.size(3);
  at::Tensor in = x;
  if (kt > 1) {
    const int64_t have = carried->defined() ? carried->size(2) : 0;
    if (have) in = at::cat({*carried, x}, 2);
    const int64_t keep = std::min<int64_t>(kt - 1, in.size(2));
    *carried = in.narrow(2, in.size(2) - keep, keep).clone();
    if (kt - 1 > have) in = at::constant_pad_nd(in, {0, 0, 0, 0, kt - 1 - have, 0});
  }
  return at::conv3d(in, weight, w(name + ".bias"), 1, {0, ks / 2, ks / 2});
}

at::Tensor WanVaeDecoder::causal_conv(const at::Tensor& x, const std::string& name, Stream& s) const {
  return causal_conv(x, name, w(name + ".weight").size(2) > 1 ? &s.next() : nullptr);
}

// F.normalize over channels (eps 1e-12 on the L2 norm) * sqrt(C) * gamma.
at::Tensor WanVaeDecoder::norm(const at::Tensor& x, const std::string& name) const {
  const at::Tensor& gamma = w(name + ".gamma");
  const double scale = std::sqrt(static_cast<double>(x.size(1)));
  return x / at::linalg_vector_norm(x, 2, {1}, true).clamp_min(1e-12) * (gamma * scale);
}

at::Tensor WanVaeDecoder::residual(const at::Tensor& x, const std::string& name, Stream& s) const {
  const at::Tensor h = weights_.count(name + ".conv_shortcut.weight") ? causal_conv(x, name + ".conv_shortcut", s) : x;
  at::Tensor y = causal_conv(at::silu(norm(x, name + ".norm1")), name + ".conv1", s);
  y = causal_conv(at::silu(norm(y, name + ".norm2")), name + ".conv2", s);
  return y.add_(h);
}

// Single-head attention over each frame's pixels.
at::Tensor WanVaeDecoder::attention(const at::Tensor& x, const std::string& name) const {
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const at::Tensor f = x.permute({0, 2, 1, 3, 4}).reshape({B * T, C, H, W});
  const at::Tensor qkv = at::conv2d(norm(f, name + ".norm"), w(name + ".to_qkv.weight"), w(name + ".to_qkv.bias"))
                             .reshape({B * T, 1, 3 * C, H * W})
                             .permute({0, 1, 3, 2});
  const auto q = qkv.chunk(3, -1);
  const at::Tensor o = at::scaled_dot_product_attention(q[0].contiguous(), q[1].contiguous(), q[2].contiguous())
                           .squeeze(1)
                           .permute({0, 2, 1})
                           .reshape({B * T, C, H, W});
  const at::Tensor y = at::conv2d(o, w(name + ".proj.weight"), w(name + ".proj.bias"));
  return y.view({B, T, C, H, W}).permute({0, 2, 1, 3, 4}).add(x);
}

// upsample3d: the time convolution doubles every frame but the clip's first (frame 2k is the first
// half of its channels, 2k + 1 the second); then, per frame, nearest x2 and a 3x3 convolution
// halving the channels (upsample2d: only the latter).
at::Tensor WanVaeDecoder::upsample(const at::Tensor& x, const std::string& name, bool temporal, Stream& s) const {
  at::Tensor v = x;
  if (temporal) {
    const int64_t first = s.clip_start ? 1 : 0;
    std::vector<at::Tensor> parts;
    if (first) parts.push_back(x.narrow(2, 0, 1));
    at::Tensor& carried = s.next();  // the time convolution's slot, used from the clip's second frame on
    if (x.size(2) > first) {
      const at::Tensor rest = x.narrow(2, first, x.size(2) - first);
      const at::Tensor y = causal_conv(rest, name + ".time_conv", &carried);
      const int64_t B = x.size(0), C = x.size(1), T = rest.size(2), H = x.size(3), W = x.size(4);
      parts.push_back(at::stack({y.narrow(1, 0, C), y.narrow(1, C, C)}, 3).reshape({B, C, 2 * T, H, W}));
    }
    v = parts.size() == 1 ? parts[0] : at::cat(parts, 2);
  }
  const int64_t B = v.size(0), C = v.size(1), T = v.size(2), H = v.size(3), W = v.size(4);
  at::Tensor f = v.permute({0, 2, 1, 3, 4}).reshape({B * T, C, H, W});
  f = at::upsample_nearest2d(f, {2 * H, 2 * W});
  f = at::conv2d(f, w(name + ".resample.1.weight"), w(name + ".resample.1.bias"), 1, 1);
  return f.view({B, T, f.size(1), 2 * H, 2 * W}).permute({0, 2, 1, 3, 4});
}

at::Tensor WanVaeDecoder::decode_chunk(const at::Tensor& latent_chunk, Stream& s) const {
  s.slot = 0;
  at::Tensor x = causal_conv(latent_chunk, "post_quant_conv", s);
  x = causal_conv(x, "decoder.conv_in", s);
  x = residual(x, "decoder.mid_block.resnets.0", s);
  x = attention(x, "decoder.mid_block.attentions.0");
  x = residual(x, "decoder.mid_block.resnets.1", s);
  const std::vector<UpStage> stages = up_stages(config_);
  for (size_t i = 0; i < stages.size(); ++i) {
    const std::string b = "decoder.up_blocks." + std::to_string(i);
    for (int j = 0; j <= config_.num_res_blocks; ++j) x = residual(x, b + ".resnets." + std::to_string(j), s);
    if (stages[i].up) x = upsample(x, b + ".upsamplers.0", stages[i].temporal, s);
  }
  x = at::silu(norm(x, "decoder.norm_out"));
  x = causal_conv(x, "decoder.conv_out", s);
  s.clip_start = false;
  return x;
}

at::Tensor WanVaeDecoder::denormalize(const at::Tensor& z) const {
  if (z.dim() != 5 || z.size(1) != config_.z_dim)
    fail("Wan-VAE: the latent must be [B, ", config_.z_dim, ", T, H, W], got ", shape_string(z.sizes()));
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor mean = at::tensor(config_.latents_mean, opts).view({1, -1, 1, 1, 1});
  const at::Tensor std = at::tensor(config_.latents_std, opts).view({1, -1, 1, 1, 1});
  return z.to(at::kFloat) * std.to(z.device(), at::kFloat) + mean.to(z.device(), at::kFloat);
}

at::Tensor WanVaeDecoder::decode_latent(const at::Tensor& latent, int chunk) const {
  return decode_frames(latent, chunk).clamp_(-1, 1);
}

at::Tensor WanVaeDecoder::decode_frames(const at::Tensor& latent, int chunk) const {
  if (latent.dim() != 5 || latent.size(1) != config_.z_dim)
    fail("Wan-VAE: the latent must be [B, ", config_.z_dim, ", T, H, W], got ", shape_string(latent.sizes()));
  if (chunk < 1) fail("Wan-VAE: chunks of at least one latent frame, got ", chunk);
  const at::Tensor z = latent.to(options_.device(), options_.dtype());
  Stream s;
  std::vector<at::Tensor> frames;
  for (int64_t t = 0; t < z.size(2); t += chunk)
    frames.push_back(decode_chunk(z.narrow(2, t, std::min<int64_t>(chunk, z.size(2) - t)), s).to(at::kFloat));
  return frames.size() == 1 ? frames[0] : at::cat(frames, 2);
}

namespace {

// The tiles' origins in latent pixels along one axis.
std::vector<int64_t> tile_starts(int64_t latent_size, int64_t stride) {
  std::vector<int64_t> s;
  for (int64_t i = 0; i < latent_size; i += stride) s.push_back(i);
  return s;
}

void check_tiling(const VaeTiling& t, int factor) {
  if (t.size <= 0 || t.stride <= 0 || t.stride > t.size || t.size % factor || t.stride % factor)
    fail("VAE tiles: the size and stride must be positive multiples of ", factor, " pixels with stride <= size, got ", t.size,
         " and ", t.stride);
}

}  // namespace

namespace {
struct TileGrid {
  std::vector<int64_t> rows, cols;  // origins in latent pixels
  int64_t size;                     // latent pixels
};
TileGrid tile_grid(const at::Tensor& latent, const VaeTiling& tiling, int factor) {
  check_tiling(tiling, factor);
  if (latent.dim() != 5) fail("Wan-VAE: the latent must be [B, C, T, H, W], got ", shape_string(latent.sizes()));
  return {tile_starts(latent.size(3), tiling.stride / factor), tile_starts(latent.size(4), tiling.stride / factor),
          tiling.size / factor};
}
}  // namespace

int WanVaeDecoder::tiles(const at::Tensor& latent, const VaeTiling& tiling) const {
  const TileGrid g = tile_grid(latent, tiling, config_.spatial_factor());
  return static_cast<int>(g.rows.size() * g.cols.size());
}

std::vector<int64_t> WanVaeDecoder::tile_shape(const at::Tensor& latent, const VaeTiling& tiling, int k) const {
  const int f = config_.spatial_factor();
  const TileGrid g = tile_grid(latent, tiling, f);
  const int64_t i = g.rows.at(k / g.cols.size()), j = g.cols.at(k % g.cols.size());
  const int64_t frames = (latent.size(2) - 1) * config_.temporal_factor() + 1;
  return {latent.size(0), config_.out_channels, frames, std::min(g.size, latent.size(3) - i) * f,
          std::min(g.size, latent.size(4) - j) * f};
}

at::Tensor WanVaeDecoder::decode_tile(const at::Tensor& latent, const VaeTiling& tiling, int k, int chunk) const {
  const TileGrid g = tile_grid(latent, tiling, config_.spatial_factor());
  if (k < 0 || static_cast<size_t>(k) >= g.rows.size() * g.cols.size()) fail("Wan-VAE: no tile ", k);
  const int64_t i = g.rows[k / g.cols.size()], j = g.cols[k % g.cols.size()];
  return decode_frames(
      latent.narrow(3, i, std::min(g.size, latent.size(3) - i)).narrow(4, j, std::min(g.size, latent.size(4) - j)), chunk);
}

std::vector<at::Tensor> WanVaeDecoder::decode_tiles(const at::Tensor& latent, const VaeTiling& tiling, int chunk) const {
  std::vector<at::Tensor> out(tiles(latent, tiling));
  for (size_t k = 0; k < out.size(); ++k) out[k] = decode_tile(latent, tiling, static_cast<int>(k), chunk);
  return out;
}

at::Tensor WanVaeDecoder::blend_tiles(std::vector<at::Tensor> tiles, const at::Tensor& latent, const VaeTiling& tiling) const {
  const int f = config_.spatial_factor();
  const TileGrid g = tile_grid(latent, tiling, f);
  const int64_t stride = tiling.stride, extent = tiling.size - tiling.stride;
  const auto& rows = g.rows;
  const auto& cols = g.cols;
  if (tiles.size() != rows.size() * cols.size()) fail("Wan-VAE: ", tiles.size(), " tiles for a ", rows.size(), "x", cols.size(), " grid");
  // b's first rows (columns) fade in over a's last: diffusers' blend_v / blend_h, in place.
  const auto blend = [](const at::Tensor& a, at::Tensor& b, int64_t dim, int64_t want) {
    const int64_t e = std::min({a.size(dim), b.size(dim), want});
    if (e <= 0) return;
    std::vector<int64_t> shape(5, 1);
    shape[dim] = e;
    const at::Tensor r = at::arange(e, a.options().dtype(at::kDouble)) / static_cast<double>(e);
    const at::Tensor fade_in = r.to(a.scalar_type()).view(shape), fade_out = (1 - r).to(a.scalar_type()).view(shape);
    at::Tensor head = b.narrow(dim, 0, e);
    head.copy_(a.narrow(dim, a.size(dim) - e, e) * fade_out + head * fade_in);
  };
  std::vector<at::Tensor> out_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<at::Tensor> row;
    for (size_t j = 0; j < cols.size(); ++j) {
      at::Tensor& t = tiles[i * cols.size() + j];
      if (!t.defined()) fail("Wan-VAE: tile ", i, ",", j, " was not decoded");
      if (i > 0) blend(tiles[(i - 1) * cols.size() + j], t, 3, extent);
      if (j > 0) blend(tiles[i * cols.size() + j - 1], t, 4, extent);
      row.push_back(t.narrow(3, 0, std::min(stride, t.size(3))).narrow(4, 0, std::min(stride, t.size(4))));
    }
    out_rows.push_back(at::cat(row, 4));
  }
  const at::Tensor all = at::cat(out_rows, 3);
  return all.narrow(3, 0, latent.size(3) * f).narrow(4, 0, latent.size(4) * f).clamp(-1, 1);
}

LatentShape WanVae::latent_shape(int frames, int height, int width) const {
  return wan_latent_shape(decoder_->config().z_dim, frames, height, width);
}

// As diffusers, a frame that fits in one tile is decoded whole.
bool WanVae::tiled(const at::Tensor& latent) const {
  const int64_t t = tiling_.size / decoder_->config().spatial_factor();
  return tiling_.size > 0 && (latent.size(3) > t || latent.size(4) > t);
}

int WanVae::parts(const at::Tensor& latent) const { return tiled(latent) ? decoder_->tiles(latent, tiling_) : 1; }

std::vector<int64_t> WanVae::part_shape(const at::Tensor& latent, int k, int frames) const {
  if (!tiled(latent)) return VAE::part_shape(latent, k, frames);
  return decoder_->tile_shape(latent, tiling_, k);
}

at::Tensor WanVae::decode_part(const at::Tensor& latent, int k, int frames) const {
  if (!tiled(latent)) return VAE::decode_part(latent, k, frames);
  return decoder_->decode_tile(decoder_->denormalize(latent.to(decoder_->options().device())), tiling_, k, chunk_);
}

at::Tensor WanVae::join_parts(std::vector<at::Tensor> parts, const at::Tensor& latent) const {
  if (!tiled(latent)) return VAE::join_parts(std::move(parts), latent);
  return decoder_->blend_tiles(std::move(parts), latent, tiling_);
}

at::Tensor WanVae::decode(const at::Tensor& latent, int) const {
  const at::Tensor z = decoder_->denormalize(latent.to(decoder_->options().device()));
  if (!tiled(latent)) return decoder_->decode_latent(z, chunk_);
  return decoder_->blend_tiles(decoder_->decode_tiles(z, tiling_, chunk_), z, tiling_);
}

}  // namespace ditto
