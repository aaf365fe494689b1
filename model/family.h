// The family registry: what a model family brings besides its DiT. A model directory's config.json
// `model_type` (or a built-in config name) finds the family; the family loads or builds the DiT and
// says how its videos map to latents (the VAE), how they are sampled when the user does not say, and
// the constants its cache policies start from. Layers above model/ go through this, never a family's
// own types.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/dit.h"
#include "model/sampler.h"
#include "model/vae.h"

namespace ditto {

// How a model is sampled when the user does not say.
struct SamplingDefaults {
  int frames = 0, height = 0, width = 0;  // the video, in pixels
  int steps = 30, fps = 24;
  double cfg_scale = 7.0;
  double cfg_scale_2 = NAN;  // a model of experts: the second (low-noise) expert's guidance; NaN: cfg_scale
  std::string sampler = "rflow";
  bool timestep_transform = false;  // the family's transform (rflow)
  double flow_shift = 0;            // rflow's fixed timestep shift (0: none)
};

// The constants the cache policies start from for a model.
struct CacheDefaults {
  std::string metric_unit;             // AdaCache's metric unit (a unit name)
  std::map<UnitRole, int> pab_ranges;  // PAB's broadcast range per role (absent or 0: never reused)
  std::pair<double, double> pab_window{450, 930};  // PAB's timestep window (lo, hi)
  std::vector<double> teacache_coefficients;       // TeaCache's rescale polynomial, highest degree first
  double teacache_threshold = 0.1;
  double fbcache_threshold = 0.08;
  // MagCache's published magnitude ratios for the model ("" : none, calibrate with ditto profile).
  std::string magcache_ratios;
  // Whether AdaCache's motion regularisation can run: its frame-to-frame differences must be local to
  // every rank's share of the tokens at any P (true under DSP, which keeps a position's frames together;
  // false under Ulysses, which splits the sequence across frames).
  bool moreg = true;
};

// What a family's timestep transform reads about the video.
struct VideoSize {
  int frames = 0, height = 0, width = 0;  // pixels
};

struct ModelFamily {
  std::string name;                      // "stdit3"
  std::vector<std::string> model_types;  // config.json model_type values it loads
  std::vector<std::string> configs;      // built-in config names (random-weight runs)
  // A directory's config.json (already parsed; `where` names it in errors), or a built-in config.
  std::function<ModelOutline(const nlohmann::json& config, const std::string& where)> outline;
  std::function<ModelOutline(const std::string& config)> builtin_outline;
  std::function<std::unique_ptr<DiT>(const std::string& dir, const at::TensorOptions& options)> load;
  std::function<std::unique_ptr<DiT>(const std::string& config, uint64_t seed, const at::TensorOptions& options)> random;
  std::function<std::unique_ptr<VAE>(const ModelOutline& model)> vae;
  std::function<SamplingDefaults(const ModelOutline& model)> sampling;
  std::function<CacheDefaults(const ModelOutline& model)> cache;
  // Training from scratch (ditto train; families that can): a built-in config's initial weights, a
  // model computing with exactly the given tensors (the trainer's, gradients and all), a model
  // directory written from weights, and the tensors that stay fixed (buffers and tables).
  std::function<std::map<std::string, at::Tensor>(const std::string& config, uint64_t seed, const at::TensorOptions& options)>
      training_init;
  std::function<std::unique_ptr<DiT>(const std::string& config, std::map<std::string, at::Tensor> weights)> from_weights;
  std::function<void(const std::string& config, std::map<std::string, at::Tensor> weights, const std::string& dir)> save;
  std::function<bool(const std::string& tensor)> frozen;
  // ditto train --init-from: a model directory's weights as the start of a new run of `config`
  // (an Error when they cannot be: another architecture).
  std::function<std::map<std::string, at::Tensor>(const std::string& dir, const std::string& config, uint64_t seed,
                                                  const at::TensorOptions& options)>
      training_from;
  // The rflow timestep transform for one video; `size_dtype` is the run's dtype (families that hold
  // sizes in the model dtype round them to it). An empty function: the family has none.
  std::function<TimestepTransform(const ModelOutline& model, const VideoSize& video, at::ScalarType size_dtype)>
      timestep_transform;
};

void register_family(ModelFamily family);  // a second family of the same name is an Error
std::vector<const ModelFamily*> model_families();
// By config.json's model_type; an Error lists the known types.
const ModelFamily& family_for_model_type(const std::string& model_type);
// By a built-in config name; an Error lists the known names.
const ModelFamily& family_for_config(const std::string& config_name);
// The family of a model or an outline.
const ModelFamily& family_of(const std::string& family);
inline const ModelFamily& family_of(const ModelOutline& m) { return family_of(m.family); }
inline const ModelFamily& family_of(const DiT& m) { return family_of(m.family()); }
// Every built-in config name of every family.
std::vector<std::string> builtin_config_names_all();

// A model directory's outline from its config.json alone (no weights read).
ModelOutline read_outline(const std::string& dir);
// A built-in config's outline.
ModelOutline builtin_outline(const std::string& config_name);
// A model directory: config.json's model_type picks the family, which loads it.
std::unique_ptr<DiT> load_dit(const std::string& dir, const at::TensorOptions& options);
// A built-in config with random weights (benchmarks, tests).
std::unique_ptr<DiT> random_dit(const std::string& config_name, uint64_t seed, const at::TensorOptions& options);

}  // namespace ditto
