#include "demo/train_loss.h"

#include "model/error.h"

namespace ditto {

at::Tensor training_loss(const at::Tensor& error, double sign_weight, const at::Tensor& captioned) {
  at::Tensor loss = error.pow(2).mean();
  if (sign_weight == 0) return loss;
  const int64_t n = error.size(0);
  if (n % 2) fail("training_loss: twins need an even batch, got ", n);
  if (captioned.numel() != n / 2) fail("training_loss: captioned has ", captioned.numel(), " entries for ", n / 2, " pairs");
  const at::Tensor pairs = error.reshape({n / 2, 2, -1});
  const at::Tensor difference = (pairs.select(1, 0) - pairs.select(1, 1)).pow(2).mean(1) / 4;
  return loss + sign_weight * (difference * captioned.to(difference.dtype())).sum() / (n / 2);
}

at::Tensor word_identity_loss(const at::Tensor& y, const at::Tensor& ids, const at::Tensor& embedding) {
  const at::Tensor tokens = y.dim() == 4 ? y.squeeze(1) : y;  // [B, L, D]
  if (tokens.dim() != 3 || ids.sizes() != tokens.sizes().slice(0, 2))
    fail("word_identity_loss: y ", y.sizes(), " and ids ", ids.sizes(), " do not match");
  const at::Tensor logits = at::matmul(tokens, embedding.narrow(0, 1, embedding.size(0) - 1).t());  // [B, L, V]
  // Word v has id v + 1; padding (id 0) becomes -1, the ignored index: the mean runs over valid tokens.
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(2)}), ids.reshape({-1}).to(at::kLong).to(logits.device()) - 1,
                                {}, at::Reduction::Mean, /*ignore_index=*/-1);
}

}  // namespace ditto
