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

// The text encoder's word-identity loss: each valid output token y[b, l] [D] must point back at its
// own word among the input token embeddings (embedding [V + 1, D], row 0 the padding): the mean over
// valid tokens of the cross-entropy of the logits y[b, l] . embedding[v] (v = 1..V) against ids[b, l].
// It keeps words the diffusion loss has not yet taught the encoder to tell apart ("left" vs "right")
// from collapsing onto one output. y [B, L, D] or [B, 1, L, D], ids [B, L] (0: padding).
at::Tensor word_identity_loss(const at::Tensor& y, const at::Tensor& ids, const at::Tensor& embedding);

}  // namespace ditto
