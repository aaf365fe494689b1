// Runs one step's units under a caching policy on this rank's share of the tokens: computes or reuses
// each unit as the plan says (through the model's one block loop), keeps the residuals reuse needs
// (in the layout they are produced in, so a reused unit costs no compute and no communication), and
// carries out the decision protocol of adaptive policies: partial sums -> one all-reduce over the
// video's ranks -> one read to the host -> rank 0 decides -> broadcast -> every rank applies the
// broadcast decision.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>

#include "cache/policy.h"
#include "dist/communicator.h"
#include "dist/video_sampler.h"
#include "model/cuda_graph.h"
#include "model/dit.h"

namespace ditto {

class CacheRunner {
 public:
  // group: every rank of the video (sequence x CFG parallel); null on one rank.
  CacheRunner(const DiT& model, CachePolicy& policy, Communicator* group);

  // A new video: resets the policy and drops every cached tensor. experts: the expert of each step
  // (a model of experts; empty: one). At an expert switch the cache starts over as at a new video:
  // the policy is reset with the steps left to the new expert and sees them counted from 0, the
  // cached residuals of the last expert are dropped.
  void begin_video(const std::vector<float>& timesteps, const std::vector<int>& experts = {});
  // The model call of step `step` (0-based) on this rank's tokens; returns the head's output tokens.
  at::Tensor forward(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx, AttentionSeam* seam, int step);
  // forward() as the video sampler's model call.
  TokenForward token_forward() {
    return [this](const at::Tensor& t, int64_t b, const DiTContext& c, AttentionSeam* s, int step) {
      return forward(t, b, c, s, step);
    };
  }
  // Units computed / total, FLOPs and bytes saved, the per-step decision log.
  nlohmann::json report() const;
  // Replaces how a reused unit's residual is made (calibration training: the teacher's residual is
  // computed from x, the student's own input to the unit); default: the policy's adjust_reused.
  using ReuseHook = std::function<at::Tensor(int unit, int step, const at::Tensor& cached, const at::Tensor& x,
                                             const DiTContext& c, AttentionSeam* seam)>;
  void set_reuse_hook(ReuseHook f) { reuse_hook_ = std::move(f); }
  // One unit's residual for input x (what a computed unit adds).
  at::Tensor compute_unit(int unit, const at::Tensor& x, const DiTContext& c, AttentionSeam* seam) const {
    return model_.unit_residual(unit, x, c, seam);
  }
  // Called with every computed unit's residual (this rank's shard) and the step (profiling).
  using UnitObserver = std::function<void(int unit, int step, const at::Tensor& residual)>;
  void set_unit_observer(UnitObserver f) { observer_ = std::move(f); }
  // Units computed in the last step (for tests).
  int last_step_units() const { return last_units_; }
  // Why this runner's steps run eagerly, or "" when they run as CUDA graphs (model/cuda_graph.h):
  // set at the first step of a video.
  const std::string& graph_refusal() const { return graph_refusal_; }

 private:
  at::Tensor run(at::Tensor x, const DiTContext& c, AttentionSeam* seam, const std::vector<uint8_t>& mask, int first,
                 int last, int step);
  void coordinate(const at::Tensor& local, int step);
  void count_unit(int unit, bool computed);

  void begin_segment(int step);

  const DiT& model_;
  CachePolicy& policy_;
  std::vector<float> timesteps_;
  std::vector<int> experts_;
  int segment_begin_ = 0;  // the first step of the current expert
  Communicator* group_;
  std::vector<UnitInfo> costs_;          // this video's units with their FLOPs and bytes (set at its first step)
  std::vector<at::Tensor> unit_cache_;  // per unit (policies that reuse single units)
  at::Tensor stack_residual_;           // x_out - x_in of the skippable part of the stack
  at::Tensor output_delta_;             // output - input tokens of the last computed step (output reuse)
  at::Tensor metric_residual_;
  int last_units_ = 0;
  int64_t units_computed_ = 0, units_total_ = 0, bytes_saved_ = 0;
  double flops_computed_ = 0, flops_total_ = 0;
  nlohmann::json log_ = nlohmann::json::array();
  nlohmann::json step_log_;
  UnitObserver observer_;
  ReuseHook reuse_hook_;
  std::unique_ptr<ForwardGraphs> graphs_;  // the plain forward's graphs, when graph_refusal_ is ""
  static constexpr const char* kNoStepYet = "the video ran no step";
  std::string graph_refusal_ = kNoStepYet;
};

}  // namespace ditto
