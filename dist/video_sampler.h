// Sampling one video on the ranks that share it: sequence parallelism over the spatial tokens
// (the latent stays sharded in token form across steps and is gathered once at the end) and
// optionally CFG parallelism (conditional and unconditional branch on two ranks, one exchange of
// predictions per step). With no groups it is the single-rank sampler; the loop is the same.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "dist/communicator.h"
#include "dist/sequence_parallel.h"
#include "model/dit.h"
#include "model/sampler.h"

namespace ditto {

struct VideoRequest {
  at::Tensor z0;            // [1, C, T, H, W] initial latent, identical on every rank of the video
  at::Tensor caption_y;     // [1, 1, L, Cc] conditional caption embedding
  at::Tensor caption_mask;  // [1, L] (nonzero = valid); the unconditional branch uses it too
  // Optional negative caption for the unconditional branch ([1, 1, L, Cc] and [1, L]); undefined:
  // the model's learned null caption with caption_mask (a model without one needs this caption).
  at::Tensor negative_y, negative_mask;
  float fps = 24, height = 0, width = 0;  // model inputs (pixels)
  double cfg_scale = 7.0;
  // A model of experts: the expert of each step (experts_per_step; empty: expert 0 throughout) and
  // the guidance of the second expert (NaN: cfg_scale).
  std::vector<int> experts;
  double cfg_scale_2 = NAN;
};

struct VideoGroups {
  Communicator* sp = nullptr;   // null or size 1: no sequence parallelism
  Communicator* cfg = nullptr;  // null or size 1: batched CFG; size 2: rank 0 conditional, rank 1 unconditional
};

// Benchmarks with random captions: a model without a learned null caption (Wan) guides with an
// unconditional caption of its own; this puts an all-zero one (one valid token) in the request as
// that stand-in when the request has none. Models with a null caption are left alone.
void add_benchmark_unconditional(VideoRequest& request, const DiT& model);

// The model call of one step on this rank's tokens (default: DiT::forward_tokens); a caching
// runner plugs in here. ctx holds the step's timestep conditioning.
using TokenForward = std::function<at::Tensor(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx,
                                              AttentionSeam* seam, int step)>;

// Every rank of the video's groups calls this with the same request. Sequence parallelism uses the
// model's first layout that can run (DiT::layout_for). The model prepares the video once; each step
// sets the timestep and runs the forward. Returns the final latent [1, C, T, H, W] (float32; float64
// for a float64 model) on every rank of the video.
at::Tensor sample_video(const DiT& model, Sampler& sampler, const VideoRequest& request, const VideoGroups& groups,
                        const StepFn& on_step = nullptr, const TokenForward& forward = nullptr);

}  // namespace ditto
