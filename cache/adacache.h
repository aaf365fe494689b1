// AdaCache (Kahatapitiya et al. 2024) as released for Open-Sora 1.2: one compute rate for the whole
// stack chosen by a codebook from the relative L1 change of one unit's residual between computed
// steps, per step since the last compute, optionally scaled by motion regularisation (MoReg).
#pragma once
#include <vector>

#include "cache/policy.h"

namespace ditto {

struct Codebook {
  std::vector<double> thresholds;
  std::vector<int> rates;
  // rates[first i < n-1 with d < thresholds[i]], else the last rate (the catch-all entry).
  int lookup(double d) const;
  static Codebook parse(const std::string& text);  // "0.08:6/0.16:5/.../1.00:1"
  std::string str() const;
};

// Published codebooks: "100-fast", "30-fast", "30-slow".
Codebook adacache_preset(const std::string& name);

struct MoRegParams {
  bool enabled = false;
  int first = 0, last = 0;  // 1-based step window (inclusive)
  double scale = 0.385, power = 8, divisor = 1, grad_mul = 10;
};

// MoReg's transformed motion score from the frame-difference sums (whole-tensor L1 norms):
// m = diff / (next + prev); returns (m / scale)^power / divisor.
double moreg_score(double diff, double next, double prev, const MoRegParams& p);

class AdaCachePolicy : public CachePolicy {
 public:
  // metric: the index of the unit whose residual feeds the metric, and its name (for the logs).
  AdaCachePolicy(Codebook codebook, int metric, std::string metric_name, MoRegParams moreg, std::string preset);
  std::string name() const override { return "adacache"; }
  nlohmann::json params() const override;
  void reset(const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  bool reuses_stack() const override { return true; }
  std::optional<int> metric_unit() const override { return metric_; }
  at::Tensor partial_sums(const at::Tensor& residual, int step) override;
  std::vector<int64_t> decide(const std::vector<double>& sums, int step) override;
  size_t decision_size() const override { return 4; }
  void apply(const std::vector<int64_t>& decision, int step) override;
  nlohmann::json log_entry(int step) const override;

  int rate() const { return rate_; }

 private:
  Codebook codebook_;
  int metric_;
  std::string metric_name_;
  MoRegParams moreg_;
  std::string preset_;
  int steps_ = 0;
  int rate_ = 1, prev_compute_ = 0;  // 1-based step of the last compute (0: none yet)
  double moreg_prev_ = 1.0;
  bool have_prev_ = false;
  at::Tensor prev_residual_;  // this rank's shard of the metric residual at the last compute
  nlohmann::json last_log_;
};

// AdaCache with per-unit rates (a step past the paper): every group of units (one unit, or one
// block's units) has its own metric, the relative L1 change of its residuals between its computed
// steps per step elapsed, and its own rate from the codebook. Steps 1, 2, N-1 and N compute all.
// Decisions are coordinated like AdaCache's: sums from every rank, rank 0 decides, all apply.
class AdaCacheUnitPolicy : public CachePolicy {
 public:
  enum class Grouping { Unit, Block };
  AdaCacheUnitPolicy(Codebook codebook, const std::vector<UnitInfo>& units, Grouping grouping, std::string preset);
  std::string name() const override { return "adacache"; }
  nlohmann::json params() const override;
  void reset(const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  bool reuses_units() const override { return true; }
  bool observes_units() const override { return true; }
  void observe_unit(int unit, const at::Tensor& residual, int step) override;
  at::Tensor partial_sums(const at::Tensor& unused, int step) override;
  std::vector<int64_t> decide(const std::vector<double>& sums, int step) override;
  size_t decision_size() const override { return 2 * groups_; }
  void apply(const std::vector<int64_t>& decision, int step) override;
  nlohmann::json log_entry(int step) const override { return last_log_; }
  int group_of(int unit) const { return grouping_ == Grouping::Unit ? unit : block_of_[unit]; }

 private:
  Codebook codebook_;
  std::vector<int> block_of_;  // per unit: its block
  int units_, groups_;
  Grouping grouping_;
  std::string preset_;
  int steps_ = 0;
  std::vector<int> last_, next_;               // 1-based step of the group's last / next compute
  std::vector<at::Tensor> prev_;               // per unit: this rank's residual at its last compute
  std::vector<at::Tensor> num_, den_;          // this step's local sums per group (on the device)
  std::vector<bool> computed_;                 // per group: computed this step
  at::TensorOptions sum_options_ = at::TensorOptions().dtype(at::kDouble);
  nlohmann::json last_log_;
};

}  // namespace ditto
