// Samplers and the one sampling loop with classifier-free guidance. A sampler supplies only its
// timesteps and its update; the loop (CFG batching, guidance, callbacks) is written once here.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"

namespace ditto {

// What the resolution- and length-dependent timestep transform reads (pixel units, as the
// reference's `height`, `width` and `num_frames` model arguments).
struct VideoGeometry {
  double height = 0, width = 0;
  int frames = 1;
  LatentSpace latent_space = LatentSpace::OpenSoraV12;
  // The dtype the reference holds these sizes in (its model dtype): a bf16 model computes the
  // transform's ratio in bf16 arithmetic, as Open-Sora's sampler does.
  at::ScalarType size_dtype = at::kFloat;
};

struct SamplerOptions {
  std::string name = "rflow";     // rflow | ddim
  int steps = 30;
  int num_timesteps = 1000;
  bool timestep_transform = true;  // rflow only (Open-Sora 1.2 samples with it)
  // rflow only: a fixed shift s > 0 of every timestep, t' = s t / (1 + (s - 1) t) (SD3 / Wan's flow
  // shift; s > 1 spends more steps at high noise). Replaces the timestep transform; 0: no shift.
  double shift = 0;
};

class Sampler {
 public:
  virtual ~Sampler() = default;
  virtual std::string name() const = 0;
  // The model's timestep input at each step (length = steps).
  virtual const std::vector<float>& timesteps() const = 0;
  // The state after step i, given the guided model prediction for z.
  virtual at::Tensor step(int i, const at::Tensor& z, const at::Tensor& prediction) const = 0;
};

// Open-Sora 1.2 rectified flow: t_i = (1 - i/N) * T, optionally transformed by
// t' = r t / (1 + (r - 1) t) with r = sqrt(H W / 512^2) * sqrt(frames') (r in the sizes' dtype,
// the rest in float32, as the reference computes it); Euler update z += v * (t_i - t_{i+1}) / T (the last step uses t_{N-1}/T).
class RectifiedFlow : public Sampler {
 public:
  RectifiedFlow(const SamplerOptions& options, const VideoGeometry& geometry);
  std::string name() const override { return "rflow"; }
  const std::vector<float>& timesteps() const override { return timesteps_; }
  at::Tensor step(int i, const at::Tensor& z, const at::Tensor& v) const override;
  // The transform alone (exposed for tests): t in [0, T], returns the transformed float32 value.
  static float transform(float t, const VideoGeometry& geometry, int num_timesteps);
  // The fixed shift alone: t in [0, T] -> s t / (1 + (s - 1) t) in the same units.
  static float shift(float t, double s, int num_timesteps);

 private:
  int num_timesteps_;
  std::vector<float> timesteps_;
};

// DDIM (eta = 0) for epsilon-predicting models trained with the linear beta schedule
// (1e-4 .. 0.02 over T steps): timesteps (N-1-i) * (T / N), the final step lands on alpha = 1.
class DDIM : public Sampler {
 public:
  explicit DDIM(const SamplerOptions& options);
  std::string name() const override { return "ddim"; }
  const std::vector<float>& timesteps() const override { return timesteps_; }
  at::Tensor step(int i, const at::Tensor& z, const at::Tensor& eps) const override;
  double alpha_cumprod(int t) const { return alphas_cumprod_.at(t); }

 private:
  std::vector<float> timesteps_;
  std::vector<double> alphas_cumprod_;
};

// The flow shift on noise levels in [0, 1]: s t / (1 + (s - 1) t), elementwise (the sampler's grid
// and `ditto train --t-sampling shifted` draw through this one formula).
at::Tensor shift_noise_levels(const at::Tensor& t, double s);

std::unique_ptr<Sampler> make_sampler(const SamplerOptions& options, const VideoGeometry& geometry);

// The model as the loop sees it: z [B', ...] and timesteps [B'] -> the prediction for z with the
// same shape as z (the caller drops pred_sigma channels). B' = 2B when guidance is batched:
// conditional half first.
using ModelFn = std::function<at::Tensor(const at::Tensor& z, const at::Tensor& t, int step)>;
// One guided prediction for z at a timestep: what a sampler step consumes.
using GuidedFn = std::function<at::Tensor(const at::Tensor& z, float t, int step)>;
using StepFn = std::function<void(int step, const at::Tensor& z)>;

// Classifier-free guidance u + s (c - u) of a batched prediction [cond; uncond] (dim 0 halves).
at::Tensor cfg_combine(const at::Tensor& batched, double scale);
// Guidance is off at scale 1: the unconditional branch is not computed at all.
inline bool guidance_enabled(double scale) { return scale != 1.0; }
// Batched CFG (Open-Sora's way): one model call on [z; z], then combine.
GuidedFn batched_guidance(ModelFn model, double scale);

// Runs every step from z0; returns the final state (same dtype as z0).
at::Tensor sample(const Sampler& sampler, const at::Tensor& z0, const GuidedFn& model, const StepFn& on_step = nullptr);

}  // namespace ditto
