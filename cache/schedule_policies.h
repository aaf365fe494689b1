// Policies whose schedule depends only on the step and timestep: every rank computes the same plan
// without communicating.
#pragma once
#include <map>

#include "cache/policy.h"

namespace ditto {

class NonePolicy : public CachePolicy {
 public:
  std::string name() const override { return "none"; }
  nlohmann::json params() const override { return nlohmann::json::object(); }
  void reset(const std::vector<float>&) override {}
  StepPlan plan(int step) override;
};

// Recompute the whole stack every `interval` steps inside [first, last] (1-based, last 0 = N-1);
// steps 1 and N always compute.
class StaticPolicy : public CachePolicy {
 public:
  StaticPolicy(int interval, int first, int last);
  std::string name() const override { return "static"; }
  nlohmann::json params() const override;
  void reset(const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  bool reuses_stack() const override { return true; }

 private:
  int interval_, first_, last_, steps_ = 0;
};

// Pyramid Attention Broadcast: each unit role (spatial, temporal, full and cross attention, MLP) reused
// over its own range while the timestep is inside (lo, hi); a role without a range (or 0) always computes.
class PabPolicy : public CachePolicy {
 public:
  PabPolicy(const std::vector<UnitInfo>& units, std::map<UnitRole, int> ranges, double lo, double hi);
  std::string name() const override { return "pab"; }
  nlohmann::json params() const override;
  void reset(const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  bool reuses_units() const override { return true; }

 private:
  std::vector<UnitRole> roles_;  // per unit
  std::map<UnitRole, int> ranges_;
  double lo_, hi_;
  std::vector<float> timesteps_;
};

}  // namespace ditto
