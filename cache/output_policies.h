// Policies that reuse a whole step, after MagCache (Ma et al. 2025: accumulated magnitude-ratio error
// of the block stack's residual, from a per-step table published or calibrated by `ditto profile`)
// and EasyCache (Zhou et al. 2025: the model's output minus its input reused while the predicted
// output change, k x relative input change, accumulates below a threshold; k measured at computed
// steps). Both decide one step for the whole batch (both CFG branches) and are exact across layouts:
// MagCache's plan is a function of the step alone; EasyCache's sums are reduced over every rank.
#pragma once
#include <string>
#include <vector>

#include "cache/policy.h"

namespace ditto {

// MagCache's magnitude ratios: per step, the mean over tokens of ||r_t|| / ||r_{t-1}|| (r the block
// stack's residual, norms over channels), for the conditional and the unconditional branch; step 0's is 1.
struct MagnitudeRatios {
  std::vector<double> cond, uncond;
  std::string source;  // a file, or the published table's name
  nlohmann::json to_json() const;
  static MagnitudeRatios from_json(const nlohmann::json& j, const std::string& where);
  static MagnitudeRatios load(const std::string& path);
  // The published tables of MagCache4Wan2.1 (50 steps, cond/uncond interleaved): "wan2.1-t2v-1.3b", "wan2.1-t2v-14b".
  static MagnitudeRatios published(const std::string& name);
  static std::vector<std::string> published_names();
  // Resampled to `steps` as MagCache does (nearest source step, numpy's round half to even).
  std::vector<double> cond_for(int steps) const;
};

// Calibrates MagCache's ratios from an uncached run: fed every unit's residual in execution order
// (this rank's shard [B, T', n, C]), it sums per branch and step the per-token ratio ||r_t|| / ||r_{t-1}||
// of the block stack's residual r (the sum of the units' residuals) and counts the tokens. Both are
// additive over shards (reduce them over the video's ranks); a batch of 2 is [conditional;
// unconditional], a batch of 1 is `branch` (the CFG-parallel rank's).
class MagnitudeProfiler {
 public:
  MagnitudeProfiler(int units, int steps, int branch, const at::TensorOptions& sum_options);
  void observe(int unit, int step, const at::Tensor& residual);
  at::Tensor sums() const { return sums_; }      // [2, steps] float64
  at::Tensor counts() const { return counts_; }  // [2, steps] float64

 private:
  int units_, branch_;
  at::Tensor sums_, counts_, stack_, previous_norms_;
};

class MagCachePolicy : public CachePolicy {
 public:
  // threshold: the accumulated error E; max_skips: K; retention: R (the first R of the steps compute).
  MagCachePolicy(MagnitudeRatios ratios, double threshold, int max_skips, double retention);
  std::string name() const override { return "magcache"; }
  nlohmann::json params() const override;
  void reset(const std::vector<float>& timesteps) override;
  void begin_segment(int first_step, int run_steps, const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  bool reuses_stack() const override { return true; }
  nlohmann::json log_entry(int step) const override;

 private:
  MagnitudeRatios ratios_;
  double threshold_, retention_;
  int max_skips_;
  std::vector<double> run_ratios_;  // per step of the whole run
  int offset_ = 0, steps_ = 0;      // the segment (a model of experts restarts at its switch)
  double acc_ratio_ = 1, acc_err_ = 0;
  int acc_steps_ = 0;
};

class EasyCachePolicy : public CachePolicy {
 public:
  EasyCachePolicy(double threshold, int warmup);
  std::string name() const override { return "easycache"; }
  nlohmann::json params() const override { return {{"threshold", threshold_}, {"warmup", warmup_}}; }
  void reset(const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  ProbeKind probe() const override { return ProbeKind::Input; }
  bool reuses_output() const override { return true; }
  at::Tensor partial_sums(const at::Tensor& input, int step) override;
  std::vector<int64_t> decide(const std::vector<double>& sums, int step) override;
  size_t decision_size() const override { return 4; }
  void apply(const std::vector<int64_t>& decision, int step) override;
  bool probe_says_compute() const override { return compute_; }
  void observe_output(const at::Tensor& input, const at::Tensor& output, int step) override;
  nlohmann::json log_entry(int step) const override;

 private:
  double threshold_;
  int warmup_, steps_ = 0;
  bool compute_ = true;
  double accumulated_ = 0, k_ = NAN, predicted_ = -1;
  // This rank's shards: the last step's input, and the last computed step's input and output.
  at::Tensor previous_input_, computed_input_, computed_output_;
  at::Tensor pending_;  // sums of |out - out_last| and |in - in_last| of the last computed step, for k
};

}  // namespace ditto
