// The caching-policy interface. A policy says, before each step, which units of the model the step
// computes; adaptive policies also turn metric partial sums (reduced over every rank of the
// video) into a decision that rank 0 makes and every rank applies. Chosen per run by name + options.
#pragma once
#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/dit.h"
#include "model/family.h"

namespace ditto {

// Units are addressed by their index in the model's unit table (DiT::units()): what a policy knows
// of a model is that table, its depth and width, and its family's cache defaults.
struct PolicyContext {
  std::vector<UnitInfo> units;
  int depth = 0;   // the model's layers (schedule files are per depth)
  int steps = 0;   // the run's sampling steps (0: not known yet)
  int hidden = 0;  // the model's width (calibration files)
  int experts = 1; // a model of experts restarts the policy at each switch
  CacheDefaults defaults;
};
// The context of a model: its units, sizes and its family's defaults.
PolicyContext policy_context(const ModelOutline& model, int steps);
inline PolicyContext policy_context(const DiT& model, int steps) { return policy_context(model.outline(), steps); }
// The index of the unit called `name`; an Error when the model has none.
int unit_named(const std::vector<UnitInfo>& units, const std::string& name);

enum class StepMode {
  Compute,     // run the blocks; `compute` says which units (empty: all); reused units add their cache
  ReuseStack,  // skip every block: x_out = x_in + the stack residual of the last computed step
  Probe,       // compute the policy's probe first, then decide (same step) between the two above
};

struct StepPlan {
  StepMode mode = StepMode::Compute;
  std::vector<uint8_t> compute;  // per unit index, Compute mode only
};

// What a probe-mode policy looks at before deciding the rest of the step.
enum class ProbeKind {
  None,
  TeaCache,    // the model's TeaCache signal (DiT::probe) of the embedded input
  FirstBlock,  // first-block cache: the residual of the first block (computed every step)
  Input,       // the step's input tokens, before the model runs (EasyCache)
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
  // A model of experts restarts the policy at each switch: the steps [first_step, first_step +
  // timesteps.size()) of a run of run_steps, counted from 0 by plan() and the rest. Default: reset().
  virtual void begin_segment(int first_step, int run_steps, const std::vector<float>& timesteps) { reset(timesteps); }
  // Steps are 0-based here; user-facing step numbers in options and logs are 1-based.
  virtual StepPlan plan(int step) = 0;
  // True if reused units need their own cached residuals.
  virtual bool reuses_units() const { return false; }
  // True if the policy may reuse the whole stack (the runner then keeps the stack residual).
  virtual bool reuses_stack() const { return false; }
  // True if the policy may skip the whole model (ProbeKind::Input says so before anything runs): the
  // output is the input plus the last computed step's output minus its input.
  virtual bool reuses_output() const { return false; }
  // Policies that reuse the output see every computed step's input and output (this rank's shard).
  virtual void observe_output(const at::Tensor& input, const at::Tensor& output, int step) {}

  // --- adaptive policies ---
  // Policies with per-unit metrics see every computed unit's residual (this rank's shard), then
  // partial_sums() at the end of the step.
  virtual bool observes_units() const { return false; }
  virtual void observe_unit(int unit, const at::Tensor& residual, int step) {}
  // The unit whose residual feeds the metric on computed steps.
  virtual std::optional<int> metric_unit() const { return std::nullopt; }
  virtual ProbeKind probe() const { return ProbeKind::None; }
  // This rank's partial sums of the metric from its local shard: the metric unit's residual on
  // computed steps, or the probe tensor in probe mode, as a float64 vector on the shard's device (the
  // runner reads it to the host once per decision). Must be exactly additive over shards; may keep
  // local state (the previous residual of this shard).
  virtual at::Tensor partial_sums(const at::Tensor& local, int step) { return {}; }
  // partial_sums() read to the host (tests and one-rank use).
  std::vector<double> local_sums(const at::Tensor& local, int step);
  // Rank 0 only: the decision from the sums reduced over every rank of the video. Fixed length.
  virtual std::vector<int64_t> decide(const std::vector<double>& sums, int step) { return {}; }
  virtual size_t decision_size() const { return 0; }
  // Every rank: apply the broadcast decision (same on all ranks by construction).
  virtual void apply(const std::vector<int64_t>& decision, int step) {}
  // For probes: did the applied decision say to compute the rest of this step?
  virtual bool probe_says_compute() const { return true; }
  // A reused unit's cached residual as the step uses it (calibrated policies adjust it).
  virtual at::Tensor adjust_reused(int unit, const at::Tensor& cached, const DiTContext& c) const { return cached; }
  // Extra fields for this step's decision-log entry.
  virtual nlohmann::json log_entry(int step) const { return nlohmann::json::object(); }
};

// `none`, `static`, `pab`, `adacache`, `teacache`, `fbcache`, `blockcache`, `magcache`, `easycache`; unknown names or options
// are an Error that lists what is known.
std::unique_ptr<CachePolicy> make_cache_policy(const std::string& name, const PolicyOptions& options,
                                               const PolicyContext& context);
std::vector<std::string> cache_policy_names();
// Parses "key=value" strings (the --cache-opt values).
PolicyOptions parse_policy_options(const std::vector<std::string>& items);

// The file a policy option names (schedule=FILE, calibration=FILE, ratios=FILE unless a published
// table's name, codebook=@FILE), or "" when the value names none; and the option item "KEY=VALUE"
// with that file replaced by `path` (job files resolve and confine the files their lines name).
std::string policy_option_file(const std::string& key, const std::string& value);
std::string policy_option_with_file(const std::string& key, const std::string& value, const std::string& path);

// Bit-exact transport of a double inside an int64 decision word.
int64_t pack_double(double v);
double unpack_double(int64_t v);

}  // namespace ditto
