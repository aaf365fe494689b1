// Policies whose schedule is a pure function of the step (no communication): `none`, `static`
// (FORA / Delta-DiT style fixed interval) and `pab` (Pyramid Attention Broadcast).
#include "cache/schedule_policies.h"

#include "model/error.h"

namespace ditto {

StepPlan NonePolicy::plan(int) { return {}; }

StaticPolicy::StaticPolicy(int interval, int first, int last) : interval_(interval), first_(first), last_(last) {
  if (interval < 1) fail("static: interval must be >= 1, got ", interval);
}

nlohmann::json StaticPolicy::params() const { return {{"interval", interval_}, {"first", first_}, {"last", last_}}; }

void StaticPolicy::reset(const std::vector<float>& timesteps) { steps_ = static_cast<int>(timesteps.size()); }

StepPlan StaticPolicy::plan(int step) {
  const int s = step + 1, last = last_ > 0 ? last_ : steps_ - 1;
  StepPlan p;
  // Outside the window, and at steps 1 and N, compute; inside, every interval-th step from `first`.
  const bool inside = s > first_ && s <= last && s > 1 && s < steps_;
  if (inside && (s - first_) % interval_ != 0) p.mode = StepMode::ReuseStack;
  return p;
}

PabPolicy::PabPolicy(int depth, int spatial, int temporal, int cross, int mlp, double lo, double hi)
    : depth_(depth), spatial_(spatial), temporal_(temporal), cross_(cross), mlp_(mlp), lo_(lo), hi_(hi) {
  if (spatial < 1 || temporal < 1 || cross < 1 || mlp < 0) fail("pab: ranges must be >= 1 (mlp >= 0)");
  if (lo >= hi) fail("pab: the timestep window must satisfy lo < hi");
}

nlohmann::json PabPolicy::params() const {
  return {{"spatial_range", spatial_}, {"temporal_range", temporal_}, {"cross_range", cross_},
          {"mlp_range", mlp_}, {"timestep_window", {lo_, hi_}}};
}

void PabPolicy::reset(const std::vector<float>& timesteps) { timesteps_ = timesteps; }

StepPlan PabPolicy::plan(int step) {
  StepPlan p;
  p.compute.assign(unit_count(depth_), 1);
  const double t = timesteps_.at(step);
  if (!(lo_ < t && t < hi_)) return p;  // outside the window every unit computes
  // A unit with range R is broadcast (reused) unless step % R == 0 (VideoSys' rule, step counted
  // from the start of the video).
  auto reuse = [&](int range) { return range > 0 && step % range != 0; };
  for (int i = 0; i < depth_; ++i) {
    for (BlockKind k : {BlockKind::Spatial, BlockKind::Temporal}) {
      const int attn_range = k == BlockKind::Spatial ? spatial_ : temporal_;
      if (reuse(attn_range)) p.compute[unit_index({k, i, UnitKind::SelfAttn})] = 0;
      if (reuse(cross_)) p.compute[unit_index({k, i, UnitKind::CrossAttn})] = 0;
      if (mlp_ > 0 && reuse(mlp_)) p.compute[unit_index({k, i, UnitKind::Mlp})] = 0;
    }
  }
  return p;
}

}  // namespace ditto
