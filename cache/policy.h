// The caching-policy interface. A policy says, before each step, which units of the block stack the
// step computes; adaptive policies also turn metric partial sums (reduced over every rank of the
// video) into a decision that rank 0 makes and every rank applies. Chosen per run by name + options.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/stdit3.h"

namespace ditto {

// A unit is what can be skipped: one of a block's three residual branches.
enum class UnitKind { SelfAttn = 0, CrossAttn = 1, Mlp = 2 };
struct UnitId {
  BlockKind block_kind;
  int block;
  UnitKind unit;
};
// Units in execution order: pair i, spatial then temporal, then self-attn, cross-attn, MLP.
inline int unit_index(const UnitId& u) {
  return (u.block * 2 + (u.block_kind == BlockKind::Temporal ? 1 : 0)) * 3 + static_cast<int>(u.unit);
}
inline int unit_count(int depth) { return depth * 6; }
inline UnitId unit_id(int index) {
  const int block = index / 3;
  return {block % 2 ? BlockKind::Temporal : BlockKind::Spatial, block / 2, static_cast<UnitKind>(index % 3)};
}
std::string unit_name(const UnitId& u);

enum class StepMode {
  Compute,     // run the blocks; `compute` says which units (empty: all); reused units add their cache
  ReuseStack,  // skip every block: x_out = x_in + the stack residual of the last computed step
  Probe,       // compute the policy's probe first, then decide (same step) between the two above
};

struct StepPlan {
  StepMode mode = StepMode::Compute;
  std::vector<uint8_t> compute;  // per unit_index, Compute mode only
};

// What a probe-mode policy looks at before deciding the rest of the step.
enum class ProbeKind {
  None,
  ModulatedInput,  // TeaCache: modulate(LN(x_embed)) of spatial block 0
  FirstBlock,      // first-block cache: the residual of spatial block 0 (computed every step)
};

// Options of a policy as given on the command line: key -> value.
using PolicyOptions = std::map<std::string, std::string>;

class CachePolicy {
 public:
  virtual ~CachePolicy() = default;
  virtual std::string name() const = 0;
  virtual nlohmann::json params() const = 0;
  // A new video: the sampler's real step count and timesteps. Forgets every state.
  virtual void reset(const std::vector<float>& timesteps) = 0;
  // Steps are 0-based here; user-facing step numbers in options and logs are 1-based.
  virtual StepPlan plan(int step) = 0;
  // True if reused units need their own cached residuals (otherwise only the stack residual).
  virtual bool reuses_units() const { return false; }

  // --- adaptive policies ---
  // Policies with per-unit metrics see every computed unit's residual (this rank's shard), then
  // partial_sums() at the end of the step.
  virtual bool observes_units() const { return false; }
  virtual void observe_unit(int unit, const at::Tensor& residual, int step) {}
  // The unit whose residual feeds the metric on computed steps.
  virtual std::optional<UnitId> metric_unit() const { return std::nullopt; }
  virtual ProbeKind probe() const { return ProbeKind::None; }
  // This rank's partial sums (float64) of the metric from its local shard: the metric unit's
  // residual [B, T, S_r, C] on computed steps, or the probe tensor in probe mode. Must be exactly
  // additive over shards; may keep local state (the previous residual of this shard).
  virtual std::vector<double> partial_sums(const at::Tensor& local, int step) { return {}; }
  // Rank 0 only: the decision from the sums reduced over every rank of the video. Fixed length.
  virtual std::vector<int64_t> decide(const std::vector<double>& sums, int step) { return {}; }
  virtual size_t decision_size() const { return 0; }
  // Every rank: apply the broadcast decision (same on all ranks by construction).
  virtual void apply(const std::vector<int64_t>& decision, int step) {}
  // For probes: did the applied decision say to compute the rest of this step?
  virtual bool probe_says_compute() const { return true; }
  // A reused unit's cached residual as the step uses it (calibrated policies adjust it).
  virtual at::Tensor adjust_reused(int unit, const at::Tensor& cached, const Conditioning& c) const { return cached; }
  // Extra fields for this step's decision-log entry.
  virtual nlohmann::json log_entry(int step) const { return nlohmann::json::object(); }
};

// `none`, `static`, `pab`, `adacache`, `teacache`, `fbcache`; unknown names or options are an Error
// that lists what is known.
// `hidden` (the model's width) is needed only to check a calibration file.
std::unique_ptr<CachePolicy> make_cache_policy(const std::string& name, const PolicyOptions& options, int depth,
                                               int steps, int hidden = 0);
std::vector<std::string> cache_policy_names();
// Parses "key=value" strings (the --cache-opt values).
PolicyOptions parse_policy_options(const std::vector<std::string>& items);

// Bit-exact transport of a double inside an int64 decision word.
int64_t pack_double(double v);
double unpack_double(int64_t v);

}  // namespace ditto
