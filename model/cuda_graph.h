// CUDA graphs of the per-step model call (--cuda-graphs). A video's steps run the same kernels on the
// same shapes: DiT::forward_tokens (embed, every unit, head) is captured once per video and expert
// and replayed every later step, the step's tokens copied into the graph's input first. What changes
// between steps besides the tokens is the context's timestep conditioning, which set_timestep
// rewrites in place (assign_in_place), so the graph reads it where it was captured.
//
// Where a graph runs: one rank's whole video (no sequence-parallel seam: its collectives are not
// captured) and steps that compute every unit (no cache policy: a policy that skips units runs
// eagerly, one graph per plan is not built). graph_refusal() says why a run stays eager.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>

#include "model/dit.h"

namespace ditto {

// Process-wide switch (--cuda-graphs; default off).
void set_cuda_graphs(bool on);
bool cuda_graphs_requested();

// Why the steps of a run on `device` with `sp_ranks` sequence-parallel ranks and cache policy `policy`
// ("none": no caching) run eagerly, or "" when they run as CUDA graphs.
std::string graph_refusal(const at::Device& device, int sp_ranks, const std::string& policy);

class ForwardGraphs {
 public:
  explicit ForwardGraphs(const DiT& model);
  ~ForwardGraphs();
  ForwardGraphs(const ForwardGraphs&) = delete;
  ForwardGraphs& operator=(const ForwardGraphs&) = delete;

  // DiT::forward_tokens(tokens, begin, ctx) for the step whose timestep ctx holds. The first call per
  // (ctx, expert, shape) runs eagerly (also warming the capture stream) and captures; later calls
  // replay. The result is the caller's (a copy of the graph's output).
  at::Tensor forward(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx, int expert);
  // Drops every graph and its memory (a new video).
  void reset();
  int captures() const { return captures_; }
  int replays() const { return replays_; }

 private:
  struct Graph;
  const DiT& model_;
  std::map<int, std::unique_ptr<Graph>> graphs_;  // per expert
  int captures_ = 0, replays_ = 0;
};

}  // namespace ditto
