// Open-Sora 1.2 rectified-flow sampler (opensora/schedulers/rf), float32 arithmetic as the reference.
#include <cmath>

#include "model/error.h"
#include "model/sampler.h"

namespace ditto {

float RectifiedFlow::transform(float t, const VideoGeometry& g, int num_timesteps) {
  // Each line is one float32 tensor operation of the reference's timestep_transform.
  const float tn = t / static_cast<float>(num_timesteps);
  const float resolution = static_cast<float>(g.height) * static_cast<float>(g.width);
  const float ratio_space = std::sqrt(resolution / static_cast<float>(512 * 512));
  float frames;
  if (g.frames == 1) {
    frames = 1.0f;
  } else if (g.latent_space == LatentSpace::OpenSoraV12) {
    frames = std::floor(static_cast<float>(g.frames) / 17.0f) * 5.0f;  // the reference's num_frames // 17 * 5
    if (frames == 0.0f)
      fail("the Open-Sora timestep transform needs 1 frame or at least 17 (", g.frames,
           " frames gives a zero time ratio); use more frames or --no-timestep-transform");
  } else {
    frames = static_cast<float>(g.frames);
  }
  float ratio = ratio_space * std::sqrt(frames);
  if (g.size_dtype == at::kBFloat16 || g.size_dtype == at::kHalf) {
    // The same operations on 16-bit tensors (each rounds to the dtype).
    auto q = [&](double v) { return at::scalar_tensor(v, at::TensorOptions().dtype(g.size_dtype)); };
    at::Tensor n = q(g.frames);
    n = g.frames == 1 ? at::ones_like(n)
        : g.latent_space == LatentSpace::OpenSoraV12 ? at::floor_divide(n, 17) * 5 : n;
    ratio = ((q(g.height) * q(g.width) / 262144).sqrt() * n.sqrt()).item<float>();
  }
  const float new_t = ratio * tn / (1.0f + (ratio - 1.0f) * tn);
  return new_t * static_cast<float>(num_timesteps);
}

at::Tensor shift_noise_levels(const at::Tensor& t, double s) {
  if (!(s > 0) || !std::isfinite(s)) fail("the flow shift must be a positive number, got ", s);
  return t * s / (1.0 + (s - 1.0) * t);
}

float RectifiedFlow::shift(float t, double s, int num_timesteps) {
  const at::Tensor tn = at::scalar_tensor(static_cast<double>(t) / num_timesteps, at::kDouble);
  return static_cast<float>(shift_noise_levels(tn, s).item<double>() * num_timesteps);
}

RectifiedFlow::RectifiedFlow(const SamplerOptions& o, const VideoGeometry& g) : num_timesteps_(o.num_timesteps) {
  if (o.num_timesteps <= 0) fail("num_timesteps must be positive");
  if (!(o.shift >= 0) || !std::isfinite(o.shift)) fail("the flow shift must be a positive number (0: none), got ", o.shift);
  const bool shifted = o.shift > 0;
  if (!shifted && o.timestep_transform && (g.height <= 0 || g.width <= 0))
    fail("the rectified-flow timestep transform needs the video's pixel height and width");
  for (int i = 0; i < o.steps; ++i) {
    const float t = static_cast<float>((1.0 - static_cast<double>(i) / o.steps) * o.num_timesteps);
    timesteps_.push_back(shifted                ? shift(t, o.shift, o.num_timesteps)
                         : o.timestep_transform ? transform(t, g, o.num_timesteps)
                                                : t);
  }
}

at::Tensor RectifiedFlow::step(int i, const at::Tensor& z, const at::Tensor& v) const {
  const float dt_raw = i + 1 < static_cast<int>(timesteps_.size()) ? timesteps_[i] - timesteps_[i + 1] : timesteps_[i];
  const float dt = dt_raw / static_cast<float>(num_timesteps_);
  return z + v * static_cast<double>(dt);
}

}  // namespace ditto
