// The STDiT3 family (Open-Sora 1.2 and ditto's pixel-space demo models built on it): loading,
// built-in configs, the VAE geometry, sampling defaults, Open-Sora's timestep transform and the
// cache policies' published constants for it.
#include <iostream>

#include "model/error.h"
#include "model/family.h"
#include "model/opensora.h"
#include "model/stdit3.h"

namespace ditto {

namespace {

STDiT3Config config_of(const ModelOutline& m) {
  if (m.family != "stdit3") fail("the STDiT3 family was handed a '", m.family, "' model");
  return parse_config(m.config, "the model's config");
}

// --init-from: a model directory's weights for `cfg`. A model without the per-frame modulation
// starts a frame_modulation config with its frame_block at the training initialisation (zero: the
// same predictions at step 0); every other difference is the loader's "does not match" error.
std::map<std::string, at::Tensor> init_from_model(const std::string& dir, const STDiT3Config& cfg, uint64_t seed, const at::TensorOptions& options) {
  STDiT3Config source = cfg;
  const STDiT3Config from = load_config(dir + "/config.json");
  if (from.frame_modulation && !cfg.frame_modulation)
    fail("--init-from '", dir, "': the model has per-frame modulation (frame_modulation), this config has none; train it with --config ",
         from.frame_caption_modulation ? "ditto-demo-fcm" : "ditto-demo-fm");
  if (from.frame_modulation && cfg.frame_modulation && from.frame_caption_modulation != cfg.frame_caption_modulation)
    fail("--init-from '", dir, "': its per-frame term reads ", from.frame_caption_modulation ? "the caption" : "the frame only",
         ", this config's reads ", cfg.frame_caption_modulation ? "the caption" : "the frame only",
         " (frame_caption_modulation): its weights would not mean the same");
  if (cfg.frame_modulation && !from.frame_modulation) source.frame_modulation = source.frame_caption_modulation = false;
  std::map<std::string, at::Tensor> weights = load_checkpoint(dir, source, options);
  if (source.frame_modulation != cfg.frame_modulation) {
    const std::map<std::string, at::Tensor> fresh = STDiT3::training_init(cfg, seed, options).weights();
    for (const auto& [name, t] : fresh)
      if (!weights.count(name)) {
        weights[name] = t;
        std::cerr << "--init-from: '" << name << "' is new in this config (frame_modulation): training initialisation\n";
      }
  }
  return weights;
}

}  // namespace

void register_stdit3_family() {
  ModelFamily f;
  f.name = "stdit3";
  f.model_types = {"STDiT3"};
  f.configs = builtin_config_names();
  f.outline = [](const nlohmann::json& j, const std::string& where) { return stdit3_outline(parse_config(j, where)); };
  f.builtin_outline = [](const std::string& name) { return stdit3_outline(builtin_config(name)); };
  f.load = [](const std::string& dir, const at::TensorOptions& options) -> std::unique_ptr<DiT> {
    return std::make_unique<STDiT3>(STDiT3::from_pretrained(dir, options));
  };
  f.random = [](const std::string& name, uint64_t seed, const at::TensorOptions& options) -> std::unique_ptr<DiT> {
    return std::make_unique<STDiT3>(STDiT3::random(builtin_config(name), seed, options));
  };
  f.training_init = [](const std::string& name, uint64_t seed, const at::TensorOptions& options) {
    return STDiT3::training_init(builtin_config(name), seed, options).weights();
  };
  f.from_weights = [](const std::string& name, std::map<std::string, at::Tensor> weights) -> std::unique_ptr<DiT> {
    return std::make_unique<STDiT3>(builtin_config(name), std::move(weights));
  };
  f.save = [](const std::string& name, std::map<std::string, at::Tensor> weights, const std::string& dir) {
    STDiT3(builtin_config(name), std::move(weights)).save_pretrained(dir);
  };
  f.frozen = [](const std::string& n) { return n == "rope.freqs" || n == "y_embedder.y_embedding"; };
  f.training_from = [](const std::string& dir, const std::string& name, uint64_t seed, const at::TensorOptions& options) {
    return init_from_model(dir, builtin_config(name), seed, options);
  };
  f.vae = [](const ModelOutline& m) -> std::unique_ptr<VAE> {
    const STDiT3Config c = config_of(m);
    if (c.latent_space == LatentSpace::Pixel) return std::make_unique<PixelSpace>(c.in_channels);
    return std::make_unique<OpenSoraV12Geometry>(c.in_channels);
  };
  // Open-Sora latent models: 51 frames at 240 x 426, CFG 7 and Open-Sora's timestep transform (its
  // sample.py); pixel-space models (the demo) their training geometry 16 x 32 x 32, CFG 2.5 (7
  // over-saturates the small demo) and no transform.
  f.sampling = [](const ModelOutline& m) {
    SamplingDefaults d;
    if (config_of(m).latent_space == LatentSpace::Pixel) {
      d.frames = 16, d.height = 32, d.width = 32, d.cfg_scale = 2.5, d.timestep_transform = false;
    } else {
      d.frames = 51, d.height = 240, d.width = 426, d.cfg_scale = 7.0, d.timestep_transform = true;
    }
    return d;
  };
  f.timestep_transform = [](const ModelOutline& m, const VideoSize& v, at::ScalarType run) {
    return opensora_transform({static_cast<double>(v.height), static_cast<double>(v.width), v.frames,
                               config_of(m).latent_space, run == at::kDouble ? at::kFloat : run});
  };
  f.cache = [](const ModelOutline& m) {
    const int depth = m.shape.depth;
    CacheDefaults d;
    // AdaCache as released: the temporal attention residual of the middle block (13 of 28).
    d.metric_unit = "temporal_blocks." + std::to_string(depth / 2 - (depth > 1)) + ".attn";
    // PAB on Open-Sora (VideoSys): spatial 2, temporal 4, cross 6 inside timesteps (450, 930).
    d.pab_ranges = {{UnitRole::SpatialAttention, 2}, {UnitRole::TemporalAttention, 4}, {UnitRole::CrossAttention, 6}};
    d.pab_window = {450, 930};
    // TeaCache's fitted polynomial for Open-Sora 1.2; thresholds 0.1 (slow) and 0.2 (fast).
    d.teacache_coefficients = {2.17546007e+02, -1.18329252e+02, 2.68662585e+01, -4.59364272e-02, 4.84426240e-02};
    d.teacache_threshold = 0.1;
    d.fbcache_threshold = 0.08;
    return d;
  };
  register_family(std::move(f));
}

}  // namespace ditto
