// The Wan family: diffusers' WanTransformer3DModel and the official WanModel directories, built-in
// configs, the Wan-VAE 2.1 latent geometry, sampling defaults (UniPC on the shifted grid, as the
// official sampler) and the cache policies' constants for Wan.
#include "model/atomic_file.h"
#include "model/error.h"
#include "model/family.h"
#include "model/wan.h"
#include "model/wan_vae.h"

namespace ditto {

namespace {

// Wan-VAE 2.1: 4x in time with the first frame alone (F = 4k + 1 frames -> k + 1 latents), 8x in
// space, 16 channels. Without a VAE directory (--vae, or a pipeline's vae/) latents are written, not decoded.
class WanVaeGeometry : public VAE {
 public:
  explicit WanVaeGeometry(int channels) : channels_(channels) {}
  std::string name() const override { return "wan2.1"; }
  LatentShape latent_shape(int frames, int height, int width) const override {
    return wan_latent_shape(channels_, frames, height, width);
  }
  bool can_decode() const override { return false; }
  std::string cannot_decode_reason() const override {
    return "no VAE was given: pass --vae DIR (diffusers' AutoencoderKLWan, e.g. a Wan pipeline's vae/) or use a pipeline directory with vae/";
  }
  at::Tensor decode(const at::Tensor&, int) const override { fail("cannot decode: ", cannot_decode_reason()); }

 private:
  int channels_;
};

WanConfig config_of(const ModelOutline& m) {
  if (m.family != "wan") fail("the Wan family was handed a '", m.family, "' model");
  return parse_wan_config(m.config, "the model's config");
}

}  // namespace

void register_wan_family() {
  ModelFamily f;
  f.name = "wan";
  f.model_types = {"WanTransformer3DModel", "WanModel"};
  f.configs = wan_builtin_config_names();
  f.outline = [](const nlohmann::json& j, const std::string& where) { return wan_outline(parse_wan_config(j, where)); };
  // Wan 2.2's built-in configs are two experts of the config's architecture, switching at t = 875.
  f.builtin_outline = [](const std::string& name) {
    ModelOutline o = wan_outline(wan_builtin_config(name));
    if (name.rfind("wan2.2-", 0) == 0) o.experts = 2, o.expert_boundary = 875;
    return o;
  };
  f.load = [](const std::string& dir, const at::TensorOptions& options) -> std::unique_ptr<DiT> {
    return std::make_unique<Wan>(Wan::from_pretrained(dir, options));
  };
  f.random = [](const std::string& name, uint64_t seed, const at::TensorOptions& options) -> std::unique_ptr<DiT> {
    return std::make_unique<Wan>(Wan::random(wan_builtin_config(name), seed, options));
  };
  f.vae = [](const ModelOutline& m) -> std::unique_ptr<VAE> {
    const WanConfig c = config_of(m);
    if (c.pixel) return std::make_unique<PixelSpace>(c.in_channels);
    return std::make_unique<WanVaeGeometry>(c.in_channels);
  };
  f.training_init = [](const std::string& name, uint64_t seed, const at::TensorOptions& options) {
    return Wan::training_init(wan_builtin_config(name), seed, options);
  };
  f.from_weights = [](const std::string& name, std::map<std::string, at::Tensor> weights) -> std::unique_ptr<DiT> {
    return std::make_unique<Wan>(wan_builtin_config(name), std::move(weights));
  };
  f.save = [](const std::string& name, std::map<std::string, at::Tensor> weights, const std::string& dir) {
    Wan(wan_builtin_config(name), std::move(weights)).save_pretrained(dir);
  };
  f.frozen = [](const std::string&) { return false; };  // Wan's RoPE tables are computed, not stored
  f.training_from = [](const std::string& dir, const std::string& name, uint64_t, const at::TensorOptions& options) {
    const Wan from = Wan::from_pretrained(dir, options);
    if (wan_config_json(from.config()) != wan_config_json(wan_builtin_config(name)))
      fail("--init-from '", dir, "': its config is not config '", name, "' (", dump_json(wan_config_json(from.config())),
           ")");
    return from.weights();
  };
  // The official T2V defaults (Wan 2.1 generate.py): 81 frames at 480 x 832, UniPC, 50 steps,
  // guidance 5, shift 5, 16 fps.
  // Wan 2.2 T2V-A14B's (its two experts): 40 steps, shift 12, guidance 4 (high noise) and 3 (low
  // noise), 720 x 1280.
  f.sampling = [](const ModelOutline& m) {
    SamplingDefaults d;
    d.frames = 81, d.height = 480, d.width = 832, d.steps = 50, d.fps = 16, d.cfg_scale = 5.0;
    d.sampler = "unipc", d.flow_shift = 5.0;
    if (m.experts > 1) d.height = 720, d.width = 1280, d.steps = 40, d.flow_shift = 12.0, d.cfg_scale = 4.0, d.cfg_scale_2 = 3.0;
    // Pixel-space models (the demo): the demo's training geometry 16 x 32 x 32, 30 steps, guidance 2.5
    // (as the STDiT demo), UniPC without a shift (trained on uniform noise levels).
    if (config_of(m).pixel) d.frames = 16, d.height = 32, d.width = 32, d.steps = 30, d.cfg_scale = 2.5, d.flow_shift = 0;
    return d;
  };
  f.cache = [](const ModelOutline& m) {
    CacheDefaults d;
    d.metric_unit = "blocks." + std::to_string(m.shape.depth / 2 - (m.shape.depth > 1)) + ".self_attn";
    d.pab_ranges = {{UnitRole::FullAttention, 2}, {UnitRole::CrossAttention, 6}};
    // TeaCache4Wan2.1 (use_ret_steps, on e0): the 1.3B and 14B polynomials by width.
    d.teacache_coefficients = m.shape.hidden_size >= 5120
                                  ? std::vector<double>{-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01}
                                  : std::vector<double>{-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02};
    d.teacache_threshold = m.shape.hidden_size >= 5120 ? 0.14 : 0.05;
    // MagCache4Wan2.1's tables by width; Wan 2.2's experts calibrate their own (ditto profile).
    if (m.experts == 1) d.magcache_ratios = m.shape.hidden_size >= 5120 ? "wan2.1-t2v-14b" : "wan2.1-t2v-1.3b";
    d.moreg = false;  // Ulysses splits the token sequence across frames
    return d;
  };
  register_family(std::move(f));
}

}  // namespace ditto
