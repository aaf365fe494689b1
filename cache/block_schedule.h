// Block Caching (Wimbauer et al., "Cache Me if You Can", CVPR 2024) on a DiT's units: change
// curves profiled from uncached runs, per-unit schedules derived from them for a threshold delta,
// and the static policy that follows a schedule (every rank alike, no communication).
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cache/policy.h"

namespace ditto {

// L1rel = ||cur - prev||_1 / ||cur||_1 (float64; 0 when both are zero).
double l1_rel(const at::Tensor& cur, const at::Tensor& prev);

// Mean relative change of every unit's residual per step, averaged over profiling runs.
struct ChangeCurves {
  int depth = 0, steps = 0, runs = 0;
  int units_per_layer = 6;                 // the model's units per layer (a spatial-temporal pair: 2 blocks x 3)
  std::vector<std::string> units;          // unit names in the model's unit order
  std::vector<std::vector<double>> l1rel;  // [unit][step]; step 0 (no previous output) is 0
  std::vector<float> timesteps;
  nlohmann::json source;  // what was profiled (model, prompts, seeds)

  nlohmann::ordered_json to_json() const;
  static ChangeCurves from_json(const nlohmann::json& j);
  std::string to_csv() const;  // unit,step1,...,stepN
  // units x steps heatmap (log10 scale from 1e-3 to 1), `cell` pixels per entry, RGB bytes.
  std::vector<uint8_t> heatmap(int cell, int* width, int* height) const;
};

// One unit's schedule for threshold delta: compute at step 1; later, reuse while the change
// accumulated since the last compute (the sum of the curve over the steps since) stays <= delta and
// recompute at the step where it would exceed delta; compute the last step. curve[0] is ignored.
std::vector<uint8_t> derive_unit_schedule(const std::vector<double>& curve, double delta);

struct BlockSchedule {
  int depth = 0, steps = 0;
  int units_per_layer = 6;
  double delta = 0;
  std::vector<std::string> units;             // unit names (empty in files without them: by index)
  std::vector<std::vector<uint8_t>> compute;  // [unit][step]
  nlohmann::json source;

  double compute_fraction() const;
  nlohmann::ordered_json to_json() const;
  static BlockSchedule from_json(const nlohmann::json& j);
  static BlockSchedule load(const std::string& path);
  void save(const std::string& path) const;
};
BlockSchedule derive_schedule(const ChangeCurves& curves, double delta);

// Scale-shift calibration of reused residuals (the paper's section 3.3): per unit, a linear layer
// from the timestep embedding t [B, C] to a per-channel scale and shift, r' = r * (1 + scale) + shift.
// Zero weights are the identity.
class ScaleShift {
 public:
  // Zero-initialised layers for every unit the schedule reuses at some step (units: the model's).
  static ScaleShift identity(const BlockSchedule& s, const std::vector<UnitInfo>& units, int hidden);
  // Tensors "unit.<name>.weight" [2C, C] and ".bias" [2C] (float32); checked against the model's units and C.
  static ScaleShift load(const std::string& path, const std::vector<UnitInfo>& units, int hidden);
  void save(const std::string& path, const std::map<std::string, std::string>& metadata) const;
  bool has(int unit) const { return params_.count(unit) > 0; }
  // r [B, ..., C] (a reused residual), t [B, C].
  at::Tensor apply(int unit, const at::Tensor& r, const at::Tensor& t) const;
  std::map<int, std::pair<at::Tensor, at::Tensor>>& params() { return params_; }  // unit -> (weight, bias)

 private:
  std::map<int, std::pair<at::Tensor, at::Tensor>> params_;
  std::vector<std::string> names_;  // unit names, for the file
};

// `--cache blockcache --cache-opt schedule=FILE [--cache-opt calibration=FILE]`: the schedule's
// units computed per step; reused residuals scale-shifted when calibrated.
class BlockCachePolicy : public CachePolicy {
 public:
  BlockCachePolicy(BlockSchedule schedule, std::string path, ScaleShift calibration = {}, std::string calibration_path = "");
  std::string name() const override { return "blockcache"; }
  nlohmann::json params() const override;
  void reset(const std::vector<float>& timesteps) override;
  StepPlan plan(int step) override;
  bool reuses_units() const override { return true; }
  at::Tensor adjust_reused(int unit, const at::Tensor& cached, const DiTContext& c) const override;

 private:
  BlockSchedule s_;
  std::string path_;
  ScaleShift calibration_;
  std::string calibration_path_;
};

}  // namespace ditto
