#include "launcher/train_loss.h"

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

}  // namespace ditto
