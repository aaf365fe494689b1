// The DiT interface's shared parts: the block loop, the plain forward over it, unit descriptions.
#include "model/dit.h"

#include <cmath>

#include "model/error.h"
#include "model/layers.h"

namespace ditto {

const char* attention_scope_name(AttentionScope scope) {
  switch (scope) {
    case AttentionScope::Frame: return "frame";
    case AttentionScope::Time: return "time";
    default: return "video";
  }
}

const char* unit_role_name(UnitRole role) {
  switch (role) {
    case UnitRole::SpatialAttention: return "spatial_attn";
    case UnitRole::TemporalAttention: return "temporal_attn";
    case UnitRole::FullAttention: return "attn";
    case UnitRole::CrossAttention: return "cross_attn";
    default: return "mlp";
  }
}

bool is_self_attention(UnitRole role) {
  return role == UnitRole::SpatialAttention || role == UnitRole::TemporalAttention || role == UnitRole::FullAttention;
}

std::vector<UnitInfo> DiT::describe_units(const DiTContext& ctx, const AttentionSeam* seam) const {
  std::vector<UnitInfo> out = units();
  const int64_t element = options().dtype().itemsize();
  for (size_t u = 0; u < out.size(); ++u) {
    out[u].flops = unit_flops(static_cast<int>(u), ctx.grid, ctx.batch, ctx.caption_tokens);
    if (seam && is_self_attention(out[u].role))
      out[u].bytes = seam->bytes(out[u].scope, ctx.batch, shape().hidden_size, element);
  }
  return out;
}

at::Tensor run_units(const std::vector<UnitInfo>& units, at::Tensor x, int first, int last, const UnitLoop& loop) {
  if (first < 0 || last > static_cast<int>(units.size()) || first > last)
    fail("run_units: units [", first, ", ", last, ") outside the model's ", units.size());
  for (int u = first; u < last; ++u) {
    x = loop.apply ? loop.apply(u, x) : x + loop.residual(u, x);
    if (loop.after_block && (u + 1 == static_cast<int>(units.size()) || units[u + 1].block != units[u].block))
      loop.after_block(units[u].block, x);
  }
  return x;
}

at::Tensor DiT::forward_tokens(const at::Tensor& tokens, int64_t begin, const DiTContext& ctx, AttentionSeam* seam,
                               const Observer& observe) const {
  auto flat = [](const at::Tensor& t) { return t.reshape({t.size(0), t.size(1) * t.size(2), t.size(3)}); };
  at::Tensor x = embed(tokens, begin, ctx);
  if (observe) observe("x_embed", flat(x));
  UnitLoop loop;
  loop.apply = [&](int u, const at::Tensor& h) { return unit_apply(u, h, ctx, seam); };
  if (observe) loop.after_block = [&](int block, const at::Tensor& h) { observe(block_name(block), flat(h)); };
  x = run_units(units(), x, 0, unit_count(), loop);
  return head(x, ctx);
}

std::vector<int> experts_per_step(const ModelOutline& model, const std::vector<float>& timesteps, double boundary) {
  if (std::isnan(boundary)) boundary = model.expert_boundary;
  std::vector<int> out;
  for (float t : timesteps) out.push_back(model.experts > 1 && t < boundary ? 1 : 0);
  return out;
}

std::string DiT::layout_for(int ranks, const TokenGrid& grid) const {
  const std::vector<std::string> layouts = parallel_layouts();
  for (const auto& layout : layouts) {
    try {
      check_layout(layout, ranks, grid);
      return layout;
    } catch (const Error&) {
    }
  }
  check_layout(layouts.front(), ranks, grid);  // throws the preferred layout's reason
  return layouts.front();
}

void DiT::select_expert(DiTContext&, int expert) const {
  if (expert != 0) fail("the model has one expert, not ", expert + 1);
}

at::Tensor DiT::forward(const DiTInputs& inputs, const Observer& observe) const {
  const std::unique_ptr<DiTContext> ctx = prepare(inputs);
  if (outline().experts > 1) {  // the expert of the (first) timestep, as a pipeline would pick it
    const float t = inputs.timestep.reshape(-1)[0].item<float>();
    select_expert(*ctx, experts_per_step(outline(), {t}, NAN)[0]);
  }
  set_timestep(*ctx, inputs.timestep);
  if (observe) observe_context(*ctx, observe);
  const DiTShape& sh = shape();
  const at::Tensor out = forward_tokens(layers::patchify(inputs.x, sh.patch), 0, *ctx, nullptr, observe);
  const TokenGrid& g = ctx->grid;
  return layers::unpatchify(out, sh.patch, sh.out_channels, g.t, g.h, g.w, g.tx, g.hx, g.wx);
}

bool assign_in_place(at::Tensor& slot, const at::Tensor& value) {
  if (slot.defined() && slot.sizes() == value.sizes() && slot.scalar_type() == value.scalar_type() &&
      slot.device() == value.device() && slot.is_contiguous()) {
    slot.copy_(value);
    return true;
  }
  slot = value.contiguous();
  return false;
}

void assign_modulation(std::vector<at::Tensor>& tables, std::vector<std::vector<at::Tensor>>& views, size_t i,
                       const at::Tensor& table, bool keep_dim) {
  if (tables.size() <= i) tables.resize(i + 1);
  if (views.size() <= i) views.resize(i + 1);
  if (!assign_in_place(tables[i], table) || views[i].empty())
    views[i] = keep_dim ? tables[i].unsqueeze(2).unbind(1) : tables[i].unbind(1);
}

TokenGrid token_grid(int64_t t, int64_t h, int64_t w, const std::array<int, 3>& p) {
  TokenGrid g;
  g.tx = t;
  g.hx = h;
  g.wx = w;
  g.t = (t + p[0] - 1) / p[0];
  g.h = (h + p[1] - 1) / p[1];
  g.w = (w + p[2] - 1) / p[2];
  return g;
}

}  // namespace ditto
