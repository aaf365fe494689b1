// Dynamic sequence parallelism for spatial-temporal DiTs: activations rest in space layout (this
// rank's spatial positions, all frames); spatial self-attention alone runs in frame layout. Each
// switch is one all-to-all with per-rank sizes, so uneven T or S need no padding.
#pragma once
#include "dist/communicator.h"
#include "model/sequence_layout.h"

namespace ditto {

class DspLayout : public SequenceLayout {
 public:
  DspLayout(Communicator& comm, int64_t grid_t, int64_t grid_s);
  at::Tensor to_frames(const at::Tensor& x) override;  // [B, T, S_r, C] -> [B, T_r, S, C]
  at::Tensor to_space(const at::Tensor& x) override;   // [B, T_r, S, C] -> [B, T, S_r, C]
  int64_t round_trip_bytes(int64_t batch, int64_t channels, int64_t element_size) const override;

  const Split& frames() const { return t_; }
  const Split& positions() const { return s_; }

 private:
  Communicator& comm_;
  Split t_, s_;
};

}  // namespace ditto
