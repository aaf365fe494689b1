// The cached block stack and the coordinated decision protocol (see cache_runner.h).
#include "cache/cache_runner.h"

#include "model/error.h"

namespace ditto {

CacheRunner::CacheRunner(const STDiT3& model, CachePolicy& policy, Communicator* group)
    : model_(model), policy_(policy), group_(group) {}

void CacheRunner::begin_video(const std::vector<float>& timesteps) {
  policy_.reset(timesteps);
  unit_cache_.assign(unit_count(model_.config().depth), at::Tensor());
  stack_residual_ = metric_residual_ = at::Tensor();
  units_computed_ = units_total_ = bytes_saved_ = 0;
  flops_computed_ = flops_total_ = 0;
  log_ = nlohmann::json::array();
}

void CacheRunner::count_unit(const UnitId& u, bool computed, const Conditioning& c, SequenceLayout* layout,
                             int64_t batch) {
  // FLOPs of the batch this rank holds over the whole token grid.
  const UnitFlops f = stdit3_unit_flops(model_.config(), batch, c.grid_t, c.grid_s(), c.y.size(1));
  double flops = u.unit == UnitKind::CrossAttn ? f.cross_attn
                 : u.unit == UnitKind::Mlp     ? f.mlp
                 : u.block_kind == BlockKind::Spatial ? f.spatial_attn
                                                      : f.temporal_attn;
  ++units_total_;
  flops_total_ += flops;
  if (computed) {
    ++units_computed_;
    ++last_units_;
    flops_computed_ += flops;
  } else if (layout && u.unit == UnitKind::SelfAttn && u.block_kind == BlockKind::Spatial) {
    bytes_saved_ += layout->round_trip_bytes(batch, model_.config().hidden_size, model_.options().dtype().itemsize());
  }
}

void CacheRunner::coordinate(const at::Tensor& local, int step) {
  std::vector<double> sums = policy_.partial_sums(local, step);
  const bool multi = group_ && group_->size() > 1;
  if (multi) {
    at::Tensor t = at::tensor(sums, at::kDouble);
    group_->all_reduce(t, ReduceOp::Sum);
    for (size_t i = 0; i < sums.size(); ++i) sums[i] = t[i].item<double>();
  }
  std::vector<int64_t> decision(policy_.decision_size(), 0);
  if (!multi || group_->rank() == 0) decision = policy_.decide(sums, step);
  if (multi) {
    at::Tensor t = at::tensor(decision, at::kLong);
    group_->broadcast(t, 0);
    for (size_t i = 0; i < decision.size(); ++i) decision[i] = t[i].item<int64_t>();
  }
  policy_.apply(decision, step);
  step_log_["decision"] = policy_.log_entry(step);
}

at::Tensor CacheRunner::compute_unit(const UnitId& u, const at::Tensor& x, const Conditioning& c,
                                     SequenceLayout* layout) const {
  switch (u.unit) {
    case UnitKind::SelfAttn: return model_.self_attention_residual(u.block_kind, u.block, x, c, layout);
    case UnitKind::CrossAttn: return model_.cross_attention_residual(u.block_kind, u.block, x, c);
    default: return model_.mlp_residual(u.block_kind, u.block, x, c);
  }
}

at::Tensor CacheRunner::run_blocks(at::Tensor x, const Conditioning& c, SequenceLayout* layout,
                                   const std::vector<uint8_t>& mask, int first, int last, int step) {
  const bool keep_units = policy_.reuses_units();
  const auto metric = policy_.metric_unit();
  for (int flat = first; flat < last; ++flat) {
    const int i = flat / 2;
    const BlockKind kind = flat % 2 ? BlockKind::Temporal : BlockKind::Spatial;
    for (UnitKind uk : {UnitKind::SelfAttn, UnitKind::CrossAttn, UnitKind::Mlp}) {
      const UnitId u{kind, i, uk};
      const int idx = unit_index(u);
      const bool compute = mask.empty() || mask[idx];
      at::Tensor r;
      if (compute) {
        r = compute_unit(u, x, c, layout);
        if (keep_units) unit_cache_[idx] = r;
        if (metric && unit_index(*metric) == idx) metric_residual_ = r;
        if (observer_) observer_(idx, step, r);
        if (policy_.observes_units()) policy_.observe_unit(idx, r, step);
      } else {
        r = unit_cache_[idx];
        if (!r.defined()) fail("cache policy '", policy_.name(), "' reused ", unit_name(u), " at step ", step + 1,
                               " before it was ever computed");
        r = reuse_hook_ ? reuse_hook_(u, step, r, x, c, layout) : policy_.adjust_reused(idx, r, c);
      }
      count_unit(u, compute, c, layout, x.size(0));
      x = x + r;
    }
  }
  return x;
}

at::Tensor CacheRunner::forward(const at::Tensor& tokens, int64_t s_begin, const Conditioning& c, SequenceLayout* layout,
                                int step) {
  const int blocks = 2 * model_.config().depth;
  StepPlan plan = policy_.plan(step);
  step_log_ = {{"step", step + 1}};
  last_units_ = 0;
  at::Tensor x = model_.embed_tokens(tokens, s_begin, c);
  int first = 0;  // the first block of the skippable part
  if (plan.mode == StepMode::Probe) {
    if (policy_.probe() == ProbeKind::ModulatedInput) {
      coordinate(model_.modulated_input(BlockKind::Spatial, 0, x, c), step);
    } else {  // first-block cache: spatial block 0 always runs and its residual decides the rest
      const at::Tensor x0 = x;
      x = run_blocks(x, c, layout, {}, 0, 1, step);
      coordinate(x - x0, step);
      first = 1;
    }
    plan.mode = policy_.probe_says_compute() ? StepMode::Compute : StepMode::ReuseStack;
  }
  const at::Tensor x_in = x;
  if (plan.mode == StepMode::ReuseStack) {
    if (!stack_residual_.defined())
      fail("cache policy '", policy_.name(), "' reused the stack at step ", step + 1, " before computing it");
    x = x + stack_residual_;
    for (int flat = first; flat < blocks; ++flat)
      for (UnitKind uk : {UnitKind::SelfAttn, UnitKind::CrossAttn, UnitKind::Mlp})
        count_unit({flat % 2 ? BlockKind::Temporal : BlockKind::Spatial, flat / 2, uk}, false, c, layout, x.size(0));
    step_log_["mode"] = "reuse";
  } else {
    metric_residual_ = at::Tensor();
    x = run_blocks(x, c, layout, plan.compute, first, blocks, step);
    if (!policy_.reuses_units()) stack_residual_ = x - x_in;
    if (policy_.metric_unit() && metric_residual_.defined()) coordinate(metric_residual_, step);
    if (policy_.observes_units()) coordinate(at::Tensor(), step);
    step_log_["mode"] = last_units_ == 3 * blocks ? "compute" : "partial";
  }
  step_log_["units"] = last_units_;
  log_.push_back(step_log_);
  return model_.final_tokens(x, c);
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
          {"decisions", log_}};
}

}  // namespace ditto
