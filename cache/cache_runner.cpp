// The cached unit loop and the coordinated decision protocol (see cache_runner.h).
#include "cache/cache_runner.h"

#include "model/error.h"
#include "model/host_sync.h"

namespace ditto {

CacheRunner::CacheRunner(const DiT& model, CachePolicy& policy, Communicator* group)
    : model_(model), policy_(policy), group_(group) {}

void CacheRunner::begin_video(const std::vector<float>& timesteps, const std::vector<int>& experts) {
  if (!experts.empty() && experts.size() != timesteps.size())
    fail("the cache runner got ", experts.size(), " experts for ", timesteps.size(), " steps");
  timesteps_ = timesteps;
  experts_ = experts;
  begin_segment(0);
  costs_.clear();
  if (graphs_) graphs_->reset();
  graph_refusal_ = kNoStepYet;
  units_computed_ = units_total_ = bytes_saved_ = 0;
  flops_computed_ = flops_total_ = 0;
  log_ = nlohmann::json::array();
}

void CacheRunner::begin_segment(int step) {
  int end = step;
  while (end < static_cast<int>(timesteps_.size()) && (experts_.empty() || experts_[end] == experts_[step])) ++end;
  segment_begin_ = step;
  policy_.begin_segment(step, static_cast<int>(timesteps_.size()),
                        std::vector<float>(timesteps_.begin() + step, timesteps_.begin() + std::max(end, step)));
  unit_cache_.assign(model_.unit_count(), at::Tensor());
  stack_residual_ = metric_residual_ = output_delta_ = at::Tensor();
}

void CacheRunner::count_unit(int unit, bool computed) {
  // FLOPs of the batch this rank holds over the whole token grid.
  const UnitInfo& u = costs_[unit];
  ++units_total_;
  flops_total_ += u.flops;
  if (computed) {
    ++units_computed_;
    ++last_units_;
    flops_computed_ += u.flops;
  } else {
    bytes_saved_ += u.bytes;
  }
}

void CacheRunner::coordinate(const at::Tensor& local, int step) {
  at::Tensor sums = policy_.partial_sums(local, step);
  const bool multi = group_ && group_->size() > 1;
  // The one read to the host of this decision (the decision group's collectives run on the host).
  sums = read_to_host(sums).to(at::kDouble).contiguous();
  if (multi) group_->all_reduce(sums, ReduceOp::Sum);
  std::vector<int64_t> decision(policy_.decision_size(), 0);
  if (!multi || group_->rank() == 0)
    decision = policy_.decide(std::vector<double>(sums.data_ptr<double>(), sums.data_ptr<double>() + sums.numel()), step);
  if (multi) {
    at::Tensor t = at::tensor(decision, at::kLong);
    group_->broadcast(t, 0);
    decision.assign(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  }
  policy_.apply(decision, step);
  step_log_["decision"] = policy_.log_entry(step);
}

at::Tensor CacheRunner::run(at::Tensor x, const DiTContext& c, AttentionSeam* seam, const std::vector<uint8_t>& mask,
                            int first, int last, int step) {
  const bool keep_units = policy_.reuses_units();
  const auto metric = policy_.metric_unit();
  UnitLoop loop;
  loop.residual = [&](int u, const at::Tensor& h) {
    const bool compute = mask.empty() || mask[u];
    at::Tensor r;
    if (compute) {
      r = compute_unit(u, h, c, seam);
      if (keep_units) unit_cache_[u] = r;
      if (metric && *metric == u) metric_residual_ = r;
      if (observer_) observer_(u, segment_begin_ + step, r);
      if (policy_.observes_units()) policy_.observe_unit(u, r, step);
    } else {
      r = unit_cache_[u];
      if (!r.defined())
        fail("cache policy '", policy_.name(), "' reused ", costs_[u].name, " at step ", segment_begin_ + step + 1,
             " before it was ever computed");
      r = reuse_hook_ ? reuse_hook_(u, segment_begin_ + step, r, h, c, seam) : policy_.adjust_reused(u, r, c);
    }
    count_unit(u, compute);
    return r;
  };
  return run_units(model_.units(), std::move(x), first, last, loop);
}

at::Tensor CacheRunner::forward(const at::Tensor& tokens, int64_t begin, const DiTContext& c, AttentionSeam* seam,
                                int global_step) {
  if (costs_.empty()) {  // the video's first step
    costs_ = model_.describe_units(c, seam);
    graph_refusal_ = observer_ || reuse_hook_ ? "the units are observed (profiling, calibration): the steps run eagerly"
                                               : ditto::graph_refusal(tokens.device(), seam ? 2 : 1, policy_.name());
    if (graph_refusal_.empty() && !graphs_) graphs_ = std::make_unique<ForwardGraphs>(model_);
  }
  if (global_step < 0 || global_step >= static_cast<int>(timesteps_.size()))
    fail("the cache runner ran step ", global_step + 1, " of a video of ", timesteps_.size(), " (begin_video first)");
  if (!experts_.empty() && global_step > 0 && experts_[global_step] != experts_[global_step - 1]) begin_segment(global_step);
  const int step = global_step - segment_begin_;  // the policy counts the current expert's steps
  const int units = model_.unit_count();
  step_log_ = {{"step", global_step + 1}};
  if (!experts_.empty() && model_.outline().experts > 1) step_log_["expert"] = experts_[global_step] + 1;
  last_units_ = 0;
  if (graph_refusal_.empty()) {  // policy "none": every unit, as the one graph of the expert's steps
    for (int u = 0; u < units; ++u) count_unit(u, true);
    step_log_["mode"] = "compute";
    step_log_["units"] = units;
    log_.push_back(step_log_);
    return graphs_->forward(tokens, begin, c, experts_.empty() ? 0 : experts_[global_step]);
  }
  StepPlan plan = policy_.plan(step);
  // Output reuse decides from the input alone, before anything of the model runs.
  if (plan.mode == StepMode::Probe && policy_.probe() == ProbeKind::Input) {
    coordinate(tokens, step);
    if (!policy_.probe_says_compute()) {
      if (!output_delta_.defined())
        fail("cache policy '", policy_.name(), "' reused the output at step ", global_step + 1, " before computing it");
      for (int u = 0; u < units; ++u) count_unit(u, false);
      step_log_["mode"] = "reuse-output";
      step_log_["units"] = 0;
      log_.push_back(step_log_);
      return tokens + output_delta_;
    }
    plan.mode = StepMode::Compute;
  }
  at::Tensor x = model_.embed(tokens, begin, c);
  int first = 0;  // the first unit of the skippable part
  if (plan.mode == StepMode::Probe) {
    if (policy_.probe() == ProbeKind::TeaCache) {
      coordinate(model_.probe(ProbeSignal::TeaCache, x, c), step);
    } else {  // first-block cache: the first block always runs and its residual decides the rest
      while (first < units && costs_[first].block == 0) ++first;
      const at::Tensor x0 = x;
      x = run(x, c, seam, {}, 0, first, step);
      coordinate(x - x0, step);
    }
    plan.mode = policy_.probe_says_compute() ? StepMode::Compute : StepMode::ReuseStack;
  }
  const at::Tensor x_in = x;
  if (plan.mode == StepMode::ReuseStack) {
    if (!stack_residual_.defined())
      fail("cache policy '", policy_.name(), "' reused the stack at step ", global_step + 1, " before computing it");
    x = x + stack_residual_;
    for (int u = first; u < units; ++u) count_unit(u, false);
    step_log_["mode"] = "reuse";
  } else {
    metric_residual_ = at::Tensor();
    x = run(x, c, seam, plan.compute, first, units, step);
    if (policy_.reuses_stack()) stack_residual_ = x - x_in;
    if (policy_.metric_unit() && metric_residual_.defined()) coordinate(metric_residual_, step);
    if (policy_.observes_units()) coordinate(at::Tensor(), step);
    step_log_["mode"] = last_units_ == units ? "compute" : "partial";
  }
  step_log_["units"] = last_units_;
  log_.push_back(step_log_);
  at::Tensor out = model_.head(x, c);
  if (policy_.reuses_output()) {
    if (out.sizes() != tokens.sizes())
      fail("cache policy '", policy_.name(), "' reuses the model's output minus its input, but this model's output tokens ",
           out.sizes(), " are not its input's ", tokens.sizes(), " (learned-sigma channels): use another policy");
    policy_.observe_output(tokens, out, step);
    output_delta_ = out - tokens;
  }
  return out;
}

nlohmann::json CacheRunner::report() const {
  return {{"policy", policy_.name()},
          {"params", policy_.params()},
          {"units_computed", units_computed_},
          {"units_total", units_total_},
          {"compute_fraction", units_total_ ? static_cast<double>(units_computed_) / units_total_ : 1.0},
          {"flops_total", flops_total_},
          {"flops_saved", flops_total_ - flops_computed_},
          {"bytes_saved_this_rank", bytes_saved_},
          {"cuda_graphs", graph_refusal_.empty() ? nlohmann::json{{"captures", graphs_ ? graphs_->captures() : 0},
                                                                  {"replays", graphs_ ? graphs_->replays() : 0}}
                                                 : nlohmann::json("off: " + graph_refusal_)},
          {"decisions", log_}};
}

}  // namespace ditto
