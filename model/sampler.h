// Samplers and the one sampling loop with classifier-free guidance. A sampler supplies only its
// timesteps and its update; the loop (CFG batching, guidance, callbacks) is written once here.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>


namespace ditto {

// A model family's timestep transform: t in [0, num_timesteps] -> t' (Open-Sora 1.2's resolution-
// and length-dependent transform lives with its family). Empty: none.
using TimestepTransform = std::function<float(float t)>;

struct SamplerOptions {
  std::string name = "rflow";     // rflow | ddim | unipc | euler
  int steps = 30;
  int num_timesteps = 1000;
  bool timestep_transform = true;  // rflow only: apply the family's transform (when it has one)
  // rflow only: a fixed shift s > 0 of every timestep, t' = s t / (1 + (s - 1) t) (SD3 / Wan's flow
  // shift; s > 1 spends more steps at high noise). Replaces the timestep transform; 0: no shift.
  double shift = 0;
  // unipc only: the noise-level grid. "official": Wan's FlowUniPCMultistepScheduler (and diffusers
  // up to 0.36), shift(linspace(1 - 1/T, 0, N + 1)[:N]); "diffusers-0.37": diffusers 0.37's
  // shift(linspace(1, 1/T, N + 1)[:N]) with the first sigma lowered by 1e-6 when it is 1.
  std::string grid = "official";
};

// The sampler names make_sampler knows, and the grids of unipc.
const std::vector<std::string>& sampler_names();
const std::vector<std::string>& sampler_grid_names();

// A sampler keeps per-video state (multistep solvers keep their history): reset() starts a video,
// then step(0), step(1), ... run in order.
class Sampler {
 public:
  virtual ~Sampler() = default;
  virtual std::string name() const = 0;
  // The model's timestep input at each step (length = steps).
  virtual const std::vector<float>& timesteps() const = 0;
  // Forgets the last video's state.
  virtual void reset() {}
  // The state after step i, given the guided model prediction for z.
  virtual at::Tensor step(int i, const at::Tensor& z, const at::Tensor& prediction) = 0;
};

// Rectified flow (Open-Sora 1.2): t_i = (1 - i/N) * T, transformed by the family's transform or by a
// fixed shift; Euler update z += v * (t_i - t_{i+1}) / T (the last step uses t_{N-1}/T).
class RectifiedFlow : public Sampler {
 public:
  RectifiedFlow(const SamplerOptions& options, const TimestepTransform& transform);
  std::string name() const override { return "rflow"; }
  const std::vector<float>& timesteps() const override { return timesteps_; }
  at::Tensor step(int i, const at::Tensor& z, const at::Tensor& v) override;
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
  at::Tensor step(int i, const at::Tensor& z, const at::Tensor& eps) override;
  double alpha_cumprod(int t) const { return alphas_cumprod_.at(t); }

 private:
  std::vector<float> timesteps_;
  std::vector<double> alphas_cumprod_;
};

// Flow-matching UniPC, bh2, order 2 with a first-order last step and a final sigma of 0, on Wan's
// schedule: sigma_i = shift(linspace(1 - 1/T, 0, N + 1)[i]) (options.shift; 0: none), the model
// reading int(T sigma_i) (truncated, as the official sampler and diffusers 0.36). The history (the
// last two x0 predictions) lasts until reset(), across a Wan 2.2 expert switch too. The prediction
// points toward the data (-v for a model whose flow v points to the noise).
class FlowUniPC : public Sampler {
 public:
  explicit FlowUniPC(const SamplerOptions& options);
  std::string name() const override { return "unipc"; }
  const std::vector<float>& timesteps() const override { return timesteps_; }
  void reset() override;
  at::Tensor step(int i, const at::Tensor& z, const at::Tensor& prediction) override;
  const std::vector<float>& sigmas() const { return sigmas_; }

 private:
  std::vector<float> timesteps_, sigmas_;  // sigmas_: N + 1, the last 0
  std::vector<at::Tensor> outputs_;        // x0 predictions so far
  at::Tensor last_sample_;                 // the corrected sample before the last predictor
  int order_ = 0;                          // the last predictor's order
};

// Flow-matching Euler as diffusers' FlowMatchEulerDiscreteScheduler (shift s, no dynamic shifting):
// sigma_i = shift(linspace(1, shift(1/T), N)[i]), then 0, where shift(1/T) is the scheduler's
// sigma_min, itself already shifted at construction: the grid's low end is shifted twice, as in
// diffusers. The model reads T sigma_i unrounded; z += (sigma_{i+1} - sigma_i) v for a flow v that
// points to the noise (ditto's prediction is -v: z -= (sigma_{i+1} - sigma_i) prediction).
class FlowMatchEuler : public Sampler {
 public:
  explicit FlowMatchEuler(const SamplerOptions& options);
  std::string name() const override { return "euler"; }
  const std::vector<float>& timesteps() const override { return timesteps_; }
  at::Tensor step(int i, const at::Tensor& z, const at::Tensor& prediction) override;
  const std::vector<float>& sigmas() const { return sigmas_; }

 private:
  std::vector<float> timesteps_, sigmas_;  // sigmas_: N + 1, the last 0
};

// The flow shift on noise levels in [0, 1]: s t / (1 + (s - 1) t), elementwise (the sampler's grid
// and `ditto train --t-sampling shifted` draw through this one formula).
at::Tensor shift_noise_levels(const at::Tensor& t, double s);

// `transform`: the model family's timestep transform for this video (rflow; empty: none).
std::unique_ptr<Sampler> make_sampler(const SamplerOptions& options, const TimestepTransform& transform = nullptr);

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

// Resets the sampler and runs every step from z0; returns the final state (same dtype as z0).
at::Tensor sample(Sampler& sampler, const at::Tensor& z0, const GuidedFn& model, const StepFn& on_step = nullptr);

}  // namespace ditto
