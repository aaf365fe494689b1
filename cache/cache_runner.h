// Runs one step's block stack under a caching policy on this rank's shard: computes or reuses each
// unit as the plan says, keeps the residuals reuse needs (in the layout they are produced in, so a
// reused unit costs no compute and no communication), and carries out the decision protocol of
// adaptive policies: partial sums -> one all-reduce over the video's ranks -> rank 0 decides ->
// broadcast -> every rank applies the broadcast decision.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>

#include "cache/policy.h"
#include "dist/communicator.h"
#include "dist/video_sampler.h"
#include "model/stdit3.h"

namespace ditto {

class CacheRunner {
 public:
  // group: every rank of the video (sequence x CFG parallel); null on one rank.
  CacheRunner(const STDiT3& model, CachePolicy& policy, Communicator* group);

  // A new video: resets the policy and drops every cached tensor.
  void begin_video(const std::vector<float>& timesteps);
  // The model call of step `step` (0-based) on this rank's tokens; returns output tokens.
  at::Tensor forward(const at::Tensor& tokens, int64_t s_begin, const Conditioning& cond, SequenceLayout* layout,
                     int step);
  // forward() as the video sampler's model call.
  TokenForward token_forward() {
    return [this](const at::Tensor& t, int64_t s0, const Conditioning& c, SequenceLayout* l, int step) {
      return forward(t, s0, c, l, step);
    };
  }
  // Units computed / total, FLOPs and bytes saved, the per-step decision log.
  nlohmann::json report() const;
  // Replaces how a reused unit's residual is made (calibration training: the teacher's residual is
  // computed from x, the student's own input to the unit); default: the policy's adjust_reused.
  using ReuseHook = std::function<at::Tensor(const UnitId& unit, int step, const at::Tensor& cached, const at::Tensor& x,
                                             const Conditioning& c, SequenceLayout* layout)>;
  void set_reuse_hook(ReuseHook f) { reuse_hook_ = std::move(f); }
  // One unit's residual for input x (what a computed unit adds).
  at::Tensor compute_unit(const UnitId& u, const at::Tensor& x, const Conditioning& c, SequenceLayout* layout) const;
  // Called with every computed unit's residual (this rank's shard) and the step (profiling).
  using UnitObserver = std::function<void(int unit, int step, const at::Tensor& residual)>;
  void set_unit_observer(UnitObserver f) { observer_ = std::move(f); }
  // Units computed in the last step (for tests).
  int last_step_units() const { return last_units_; }

 private:
  // Blocks [first, last) in execution order (flat index: pair * 2 + temporal).
  at::Tensor run_blocks(at::Tensor x, const Conditioning& c, SequenceLayout* layout, const std::vector<uint8_t>& mask,
                        int first, int last, int step);
  void coordinate(const at::Tensor& local, int step);
  void count_unit(const UnitId& u, bool computed, const Conditioning& c, SequenceLayout* layout, int64_t batch);

  const STDiT3& model_;
  CachePolicy& policy_;
  Communicator* group_;
  std::vector<at::Tensor> unit_cache_;  // per unit_index (policies that reuse single units)
  at::Tensor stack_residual_;           // x_out - x_in of the skippable part of the stack
  at::Tensor metric_residual_;
  int last_units_ = 0;
  int64_t units_computed_ = 0, units_total_ = 0, bytes_saved_ = 0;
  double flops_computed_ = 0, flops_total_ = 0;
  nlohmann::json log_ = nlohmann::json::array();
  nlohmann::json step_log_;
  UnitObserver observer_;
  ReuseHook reuse_hook_;
};

}  // namespace ditto
