// What Open-Sora 1.2's sampling adds to rectified flow: the resolution- and length-dependent timestep
// transform (its frame-count rule included), as the STDiT3 family supplies it to the sampler.
#pragma once
#include <ATen/ATen.h>

#include "model/config.h"
#include "model/sampler.h"

namespace ditto {

// What the transform reads (pixel units, as the reference's `height`, `width` and `num_frames`).
struct VideoGeometry {
  double height = 0, width = 0;
  int frames = 1;
  LatentSpace latent_space = LatentSpace::OpenSoraV12;
  // The dtype the reference holds these sizes in (its model dtype): a bf16 model computes the
  // transform's ratio in bf16 arithmetic, as Open-Sora's sampler does.
  at::ScalarType size_dtype = at::kFloat;
};

// t' = r t / (1 + (r - 1) t) with r = sqrt(H W / 512^2) * sqrt(frames'), frames' = num_frames // 17 * 5
// for Open-Sora's VAE (the frame count itself for pixel-space models), r in the sizes' dtype and the
// rest in float32, as the reference computes it. t in [0, T]; returns the transformed float32 value.
float opensora_timestep_transform(float t, const VideoGeometry& geometry, int num_timesteps);
// The same as a sampler's transform for one video (a geometry it cannot take is an Error when used).
TimestepTransform opensora_transform(const VideoGeometry& geometry, int num_timesteps = 1000);

}  // namespace ditto
