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
  // Bytes this rank sends for one to_frames + to_space round trip of a [B, ., ., channels] tensor
  // (what a reused spatial self-attention saves).
  virtual int64_t round_trip_bytes(int64_t batch, int64_t channels, int64_t element_size) const = 0;
};

}  // namespace ditto
