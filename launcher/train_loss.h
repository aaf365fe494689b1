// The loss `ditto train` minimises, from the velocity errors of a batch.
#pragma once
#include <ATen/ATen.h>

namespace ditto {

// error = v - u [N, ...] (the model's velocity minus the rectified-flow target). Returns mean(e^2).
// With twins (clips 2i and 2i + 1: one scene with opposite motion, one noise, one noise level; N even)
// and sign_weight > 0, adds
//   sign_weight * sum_i captioned[i] * mean((e_2i - e_2i+1)^2) / 4 / (N / 2),
// the difference part of the pair's loss: (l_a + l_b) / 2 = mean((e_a + e_b)^2) / 4 + mean((e_a - e_b)^2) / 4,
// and at high noise only the direction words can explain the difference. captioned [N / 2] (0 or 1):
// pairs trained with the null caption (caption dropout) are left out of the extra term.
at::Tensor training_loss(const at::Tensor& error, double sign_weight, const at::Tensor& captioned);

}  // namespace ditto
