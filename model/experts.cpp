// A DiT of several experts taking turns by noise level (see experts.h).
#include "model/experts.h"

#include <cmath>

#include "model/error.h"

namespace ditto {

namespace {

class ExpertContext : public DiTContext {
 public:
  std::vector<std::unique_ptr<DiTContext>> experts;
  int active = 0;
  const DiTContext& current() const { return *experts[active]; }
  DiTContext& current() { return *experts[active]; }
  const at::Tensor& timestep_embedding() const override { return current().timestep_embedding(); }
};

const ExpertContext& context_of(const DiTContext& c) {
  const auto* e = dynamic_cast<const ExpertContext*>(&c);
  if (!e) fail("an expert model was handed another model's context");
  return *e;
}

bool same_shape(const DiTShape& a, const DiTShape& b) {
  return a.in_channels == b.in_channels && a.out_channels == b.out_channels && a.patch == b.patch &&
         a.hidden_size == b.hidden_size && a.num_heads == b.num_heads && a.depth == b.depth &&
         a.caption_tokens == b.caption_tokens && a.caption_channels == b.caption_channels;
}

ExpertContext& context_of(DiTContext& c) { return const_cast<ExpertContext&>(context_of(static_cast<const DiTContext&>(c))); }

}  // namespace

ModelOutline expert_outline(const std::vector<ModelOutline>& experts, double boundary, const std::string& where) {
  if (experts.size() != 2) fail(where, ": a model of experts has 2 of them, not ", experts.size());
  if (!(boundary > 0) || !std::isfinite(boundary)) fail(where, ": the expert boundary must be a positive timestep, got ", boundary);
  for (size_t i = 1; i < experts.size(); ++i) {
    if (experts[i].family != experts[0].family || !same_shape(experts[i].shape, experts[0].shape) ||
        experts[i].units.size() != experts[0].units.size())
      fail(where, ": expert ", i + 1, " is not the architecture of expert 1 (", experts[i].family, " vs ",
           experts[0].family, ", or another size)");
    if (experts[i].experts != 1) fail(where, ": an expert is itself a model of experts");
  }
  ModelOutline o = experts[0];
  o.experts = static_cast<int>(experts.size());
  o.expert_boundary = boundary;
  return o;
}

ExpertSwitch::ExpertSwitch(std::vector<std::unique_ptr<DiT>> experts, double boundary) : experts_(std::move(experts)) {
  std::vector<ModelOutline> outlines;
  for (const auto& e : experts_) outlines.push_back(e->outline());
  outline_ = expert_outline(outlines, boundary, "the model");
  for (const auto& e : experts_)
    if (e->options().dtype() != options().dtype() || e->options().device() != options().device())
      fail("the experts of a model must share a dtype and a device");
}

nlohmann::ordered_json ExpertSwitch::describe() const {
  nlohmann::ordered_json j = experts_.front()->describe();
  j["experts"] = experts_.size();
  j["expert_boundary"] = outline_.expert_boundary;
  return j;
}

std::unique_ptr<DiTContext> ExpertSwitch::prepare(const DiTInputs& inputs) const {
  auto c = std::make_unique<ExpertContext>();
  for (const auto& e : experts_) c->experts.push_back(e->prepare(inputs));
  const DiTContext& first = *c->experts.front();
  c->grid = first.grid;
  c->batch = first.batch;
  c->caption_tokens = first.caption_tokens;
  return c;
}

void ExpertSwitch::select_expert(DiTContext& ctx, int expert) const {
  if (expert < 0 || expert >= static_cast<int>(experts_.size()))
    fail("the model has ", experts_.size(), " experts, not ", expert + 1);
  context_of(ctx).active = expert;
}

void ExpertSwitch::set_timestep(DiTContext& ctx, const at::Tensor& timestep) const {
  ExpertContext& c = context_of(ctx);
  experts_[c.active]->set_timestep(c.current(), timestep);
}

at::Tensor ExpertSwitch::embed(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx) const {
  const ExpertContext& c = context_of(ctx);
  return experts_[c.active]->embed(tokens, begin, c.current());
}

at::Tensor ExpertSwitch::unit_residual(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const {
  const ExpertContext& c = context_of(ctx);
  return experts_[c.active]->unit_residual(unit, x, c.current(), seam);
}

at::Tensor ExpertSwitch::unit_apply(int unit, const at::Tensor& x, const DiTContext& ctx, AttentionSeam* seam) const {
  const ExpertContext& c = context_of(ctx);
  return experts_[c.active]->unit_apply(unit, x, c.current(), seam);
}

at::Tensor ExpertSwitch::head(const at::Tensor& x, const DiTContext& ctx) const {
  const ExpertContext& c = context_of(ctx);
  return experts_[c.active]->head(x, c.current());
}

at::Tensor ExpertSwitch::probe(ProbeSignal signal, const at::Tensor& x, const DiTContext& ctx) const {
  const ExpertContext& c = context_of(ctx);
  return experts_[c.active]->probe(signal, x, c.current());
}

void ExpertSwitch::observe_context(const DiTContext& ctx, const Observer& observe) const {
  const ExpertContext& c = context_of(ctx);
  experts_[c.active]->observe_context(c.current(), observe);
}

}  // namespace ditto
