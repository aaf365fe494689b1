// Threshold policies that decide within the step from a cheap probe: TeaCache (accumulated,
// polynomial-rescaled relative change of the model's TeaCache signal) and first-block cache (relative
// change of block 0's residual against the last computed step).
#pragma once
#include <vector>

#include "cache/policy.h"

namespace ditto {

class TeaCachePolicy : public CachePolicy {
 public:
  TeaCachePolicy(double threshold, std::vector<double> coefficients);
  std::string name() const override { return "teacache"; }
  nlohmann::json params() const override;
  void reset(const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  bool reuses_stack() const override { return true; }
  ProbeKind probe() const override { return ProbeKind::TeaCache; }
  at::Tensor partial_sums(const at::Tensor& indicator, int step) override;
  std::vector<int64_t> decide(const std::vector<double>& sums, int step) override;
  size_t decision_size() const override { return 3; }
  void apply(const std::vector<int64_t>& decision, int step) override;
  bool probe_says_compute() const override { return compute_; }
  nlohmann::json log_entry(int step) const override;
  // The rescale polynomial c0 x^4 + c1 x^3 + ... + c4 (numpy.polyval order).
  double rescale(double x) const;

 private:
  double threshold_;
  std::vector<double> coefficients_;
  int steps_ = 0;
  double accumulated_ = 0, last_rel_ = -1;
  bool compute_ = true;
  at::Tensor previous_;  // this rank's shard of the previous step's indicator
};

class FirstBlockCachePolicy : public CachePolicy {
 public:
  explicit FirstBlockCachePolicy(double threshold);
  std::string name() const override { return "fbcache"; }
  nlohmann::json params() const override { return {{"threshold", threshold_}}; }
  void reset(const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  bool reuses_stack() const override { return true; }
  ProbeKind probe() const override { return ProbeKind::FirstBlock; }
  at::Tensor partial_sums(const at::Tensor& residual, int step) override;
  std::vector<int64_t> decide(const std::vector<double>& sums, int step) override;
  size_t decision_size() const override { return 2; }
  void apply(const std::vector<int64_t>& decision, int step) override;
  bool probe_says_compute() const override { return compute_; }
  nlohmann::json log_entry(int step) const override;

 private:
  double threshold_;
  int steps_ = 0;
  bool compute_ = true;
  double last_rel_ = -1;
  at::Tensor reference_;   // block 0's residual at the last computed step (this rank's shard)
  at::Tensor candidate_;   // this step's, adopted as the reference if the step computes
};

}  // namespace ditto
