// The seam between the model and sequence parallelism: how a block moves its activations between
// the space layout (this rank's spatial positions, all frames) and the frame layout (this rank's
// frames, all positions). The model calls it around spatial self-attention only; dist/ implements it.
#pragma once
#include <ATen/ATen.h>

namespace ditto {

class SequenceLayout {
 public:
  virtual ~SequenceLayout() = default;
  // [B, T, S_r, C] -> [B, T_r, S, C]
  virtual at::Tensor to_frames(const at::Tensor& x) = 0;
  // [B, T_r, S, C] -> [B, T, S_r, C]
  virtual at::Tensor to_space(const at::Tensor& x) = 0;
};

}  // namespace ditto
