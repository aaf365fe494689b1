// Open-Sora 1.2's timestep transform (opensora/schedulers/rf/rectified_flow.py timestep_transform).
#include "model/opensora.h"

#include <cmath>

#include "model/error.h"

namespace ditto {

float opensora_timestep_transform(float t, const VideoGeometry& g, int num_timesteps) {
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

TimestepTransform opensora_transform(const VideoGeometry& g, int num_timesteps) {
  return [g, num_timesteps](float t) {
    if (g.height <= 0 || g.width <= 0)
      fail("the rectified-flow timestep transform needs the video's pixel height and width");
    return opensora_timestep_transform(t, g, num_timesteps);
  };
}

}  // namespace ditto
