// The demo training's optimizer step: global gradient-norm clipping, AdamW, EMA of the weights, each
// as one multi-tensor (fused) kernel over all parameters rather than a dozen small kernels per tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace ditto {

struct AdamWGroup {
  std::vector<at::Tensor> params, m, v, ema;  // params carry their .grad()
  double weight_decay = 0;                    // decoupled: p -= lr * weight_decay * p
};

struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double max_grad_norm = 1;  // the gradients of all groups together are scaled to at most this norm
  double ema_decay = 0.995;  // ema = decay * ema + (1 - decay) * param, after the step
};

// One step at learning rate lr; `step` counts from 1 (bias correction 1 - beta^step). The gradient
// scaling stays on the device (no host synchronisation).
void adamw_step(std::vector<AdamWGroup>& groups, double lr, int64_t step, const AdamWSettings& s);

}  // namespace ditto
