// AdamW with clipping and EMA over parameter lists (see adamw.h).
#include "demo/adamw.h"

#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/clamp_max.h>
#include <ATen/ops/full.h>
#include <ATen/ops/stack.h>

namespace ditto {

void adamw_step(std::vector<AdamWGroup>& groups, double lr, int64_t step, const AdamWSettings& s) {
  std::vector<at::Tensor> grads;
  for (auto& g : groups)
    for (auto& p : g.params) grads.push_back(p.grad());
  if (grads.empty()) return;
  // Global norm over every gradient, then scale = min(1, max_norm / (norm + 1e-6)), on the device.
  const at::Tensor norm = at::stack(at::_foreach_norm(grads)).pow(2).sum().sqrt();
  at::_foreach_mul_(grads, at::clamp_max(s.max_grad_norm / (norm + 1e-6), 1.0));
  size_t next = 0;
  for (auto& g : groups) {
    if (g.params.empty()) continue;
    const size_t n = g.params.size();
    const std::vector<at::Tensor> gg(grads.begin() + next, grads.begin() + next + n);
    next += n;
    // The kernel reads each parameter's step count from a float tensor on its device.
    const std::vector<at::Tensor> steps(n, at::full({}, static_cast<double>(step), g.params[0].options().dtype(at::kFloat)));
    at::_fused_adamw_(g.params, gg, g.m, g.v, {}, steps, lr, s.beta1, s.beta2, g.weight_decay, s.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    at::_foreach_lerp_(g.ema, g.params, 1 - s.ema_decay);
  }
}

}  // namespace ditto
