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

PabPolicy::PabPolicy(const std::vector<UnitInfo>& units, std::map<UnitRole, int> ranges, double lo, double hi)
    : ranges_(std::move(ranges)), lo_(lo), hi_(hi) {
  for (const auto& [role, range] : ranges_)
    if (range < 0) fail("pab: the ", unit_role_name(role), " range must be >= 0 (0: never reused), got ", range);
  if (lo >= hi) fail("pab: the timestep window must satisfy lo < hi");
  for (const UnitInfo& u : units) roles_.push_back(u.role);
}

nlohmann::json PabPolicy::params() const {
  nlohmann::json ranges = nlohmann::json::object();
  for (const auto& [role, range] : ranges_) ranges[unit_role_name(role)] = range;
  return {{"ranges", ranges}, {"timestep_window", {lo_, hi_}}};
}

void PabPolicy::reset(const std::vector<float>& timesteps) { timesteps_ = timesteps; }

StepPlan PabPolicy::plan(int step) {
  StepPlan p;
  p.compute.assign(roles_.size(), 1);
  const double t = timesteps_.at(step);
  if (!(lo_ < t && t < hi_)) return p;  // outside the window every unit computes
  // A unit with range R is broadcast (reused) unless step % R == 0 (VideoSys' rule, step counted
  // from the start of the video).
  for (size_t u = 0; u < roles_.size(); ++u) {
    auto it = ranges_.find(roles_[u]);
    if (it != ranges_.end() && it->second > 0 && step % it->second != 0) p.compute[u] = 0;
  }
  return p;
}

}  // namespace ditto
