// Rectified-flow sampler (Open-Sora 1.2 opensora/schedulers/rf), float32 arithmetic as the reference.
#include <cmath>

#include "model/error.h"
#include "model/sampler.h"

namespace ditto {

at::Tensor shift_noise_levels(const at::Tensor& t, double s) {
  if (!(s > 0) || !std::isfinite(s)) fail("the flow shift must be a positive number, got ", s);
  return t * s / (1.0 + (s - 1.0) * t);
}

float RectifiedFlow::shift(float t, double s, int num_timesteps) {
  const at::Tensor tn = at::scalar_tensor(static_cast<double>(t) / num_timesteps, at::kDouble);
  return static_cast<float>(shift_noise_levels(tn, s).item<double>() * num_timesteps);
}

RectifiedFlow::RectifiedFlow(const SamplerOptions& o, const TimestepTransform& transform)
    : num_timesteps_(o.num_timesteps) {
  if (o.num_timesteps <= 0) fail("num_timesteps must be positive");
  if (!(o.shift >= 0) || !std::isfinite(o.shift)) fail("the flow shift must be a positive number (0: none), got ", o.shift);
  const bool shifted = o.shift > 0, transformed = !shifted && o.timestep_transform && transform;
  for (int i = 0; i < o.steps; ++i) {
    const float t = static_cast<float>((1.0 - static_cast<double>(i) / o.steps) * o.num_timesteps);
    timesteps_.push_back(shifted ? shift(t, o.shift, o.num_timesteps) : transformed ? transform(t) : t);
  }
}

at::Tensor RectifiedFlow::step(int i, const at::Tensor& z, const at::Tensor& v) {
  const float dt_raw = i + 1 < static_cast<int>(timesteps_.size()) ? timesteps_[i] - timesteps_[i + 1] : timesteps_[i];
  const float dt = dt_raw / static_cast<float>(num_timesteps_);
  return z + v * static_cast<double>(dt);
}

FlowMatchEuler::FlowMatchEuler(const SamplerOptions& o) {
  if (o.num_timesteps <= 0) fail("num_timesteps must be positive");
  if (!(o.shift >= 0) || !std::isfinite(o.shift)) fail("the flow shift must be a positive number (0: none), got ", o.shift);
  const double s = o.shift > 0 ? o.shift : 1.0;
  const int T = o.num_timesteps;
  auto shifted = [s](double x) { return s * x / (1.0 + (s - 1.0) * x); };
  // The scheduler's construction: its training sigmas shifted once in float32; sigma_max and sigma_min
  // are their ends, so the grid runs from shift(1) = 1 to shift(1/T) and is shifted again below.
  auto shifted32 = [s](float x) { return static_cast<float>(s) * x / (1.0f + static_cast<float>(s - 1.0) * x); };
  const double sigma_max = shifted32(static_cast<float>(T) / static_cast<float>(T));
  const double sigma_min = shifted32(1.0f / static_cast<float>(T));
  for (int i = 0; i < o.steps; ++i) {
    // numpy's linspace(T sigma_max, T sigma_min, N) in float64, divided by T, shifted, to float32.
    const double a = sigma_max * T, b = sigma_min * T;
    const double t = o.steps == 1 ? a : (i == o.steps - 1 ? b : a + (b - a) / (o.steps - 1) * i);
    const float sigma = static_cast<float>(shifted(t / T));
    sigmas_.push_back(sigma);
    timesteps_.push_back(sigma * static_cast<float>(T));
  }
  sigmas_.push_back(0.0f);
}

at::Tensor FlowMatchEuler::step(int i, const at::Tensor& z, const at::Tensor& prediction) {
  if (i < 0 || i >= static_cast<int>(timesteps_.size())) fail("euler: step ", i, " outside 0..", timesteps_.size() - 1);
  const float dt = sigmas_[i + 1] - sigmas_[i];
  return z - prediction * static_cast<double>(dt);
}

}  // namespace ditto
