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

}  // namespace ditto
