// The random tiny-model video request the cache and parallel tests sample (stdit3-tiny: 4 latent
// channels, 8 caption tokens of 32 channels; 51 frames -> 15 latent frames).
#pragma once
#include "cache/policy.h"
#include "dist/video_sampler.h"
#include "model/stdit3.h"

namespace ditto::test {

inline VideoRequest tiny_video_request(uint64_t seed, int height_px, int width_px, int valid_tokens = 8) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  VideoRequest req;
  req.z0 = at::randn({1, 4, 15, height_px / 8, width_px / 8}, gen, at::kFloat);
  req.caption_y = at::randn({1, 1, 8, 32}, gen, at::kFloat);
  req.caption_mask = at::zeros({1, 8}, at::kLong);
  req.caption_mask.narrow(1, 0, valid_tokens).fill_(1);
  req.height = static_cast<float>(height_px);
  req.width = static_cast<float>(width_px);
  return req;
}

// A random request for the tiny Wan configs (wan-tiny, wan2.2-tiny: 4 latent channels, 8 caption
// tokens of 16 channels, all valid) over a T x H x W latent; guidance and the unconditional caption
// are each test's.
inline VideoRequest tiny_wan_request(uint64_t seed, int64_t t = 3, int64_t h = 4, int64_t w = 6, at::ScalarType dtype = at::kFloat) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  VideoRequest req;
  req.z0 = at::randn({1, 4, t, h, w}, gen, dtype);
  req.caption_y = at::randn({1, 1, 8, 16}, gen, at::kFloat);
  req.caption_mask = at::ones({1, 8}, at::kLong);
  return req;
}

// The cache-policy context of a depth-`depth` STDiT3 (its units and defaults; no weights) for `steps` steps.
inline PolicyContext stdit3_policy_context(int depth, int steps) {
  STDiT3Config c = builtin_config("stdit3-tiny");
  c.depth = depth;
  return policy_context(stdit3_outline(c), steps);
}

}  // namespace ditto::test
