// Dynamic sequence parallelism for spatial-temporal DiTs: activations rest in space layout (this
// rank's spatial positions, all frames); spatial self-attention alone runs in frame layout. Each
// switch is one all-to-all with per-rank sizes, so uneven T or S need no padding.
#pragma once
#include "dist/sequence_parallel.h"

namespace ditto {

// DSP's switches in N frame groups (default 1): spatial attention runs on this rank's frames in N
// groups, group g + 1's frames arriving while group g attends and group g's outputs on their way
// back while g + 1 attends. The same computation frame by frame; the same bytes in N times the calls.
void set_dsp_frame_groups(int groups);
int dsp_frame_groups();

class DspLayout : public SequenceParallel {
 public:
  DspLayout(Communicator& comm, int64_t grid_t, int64_t grid_s);
  std::string name() const override { return "dsp"; }
  // [B, T, S_r, C] -> [B, T_r, S, C]. The result is a view of a position-major buffer ([S, B, T_r, C]
  // in memory): every rank's share lands in it in place, so the switch costs one packing copy.
  at::Tensor to_frames(const at::Tensor& x);
  // [B, T_r, S, C] (any memory order) -> [B, T, S_r, C] contiguous. A position-major input is sent
  // without packing; the received shares are placed with one copy.
  at::Tensor to_space(const at::Tensor& x);
  int64_t round_trip_bytes(int64_t batch, int64_t channels, int64_t element_size) const;

  // AttentionSeam: frame-scope attention runs in frame layout; the rest is local in space layout.
  at::Tensor enter(AttentionScope scope, const at::Tensor& x) override;
  at::Tensor leave(AttentionScope scope, const at::Tensor& x) override;
  // Frame scope with dsp_frame_groups() > 1 (at most the fewest frames a rank holds): the pipeline above.
  at::Tensor run_in(AttentionScope scope, const at::Tensor& x, const Local& f) override;
  int64_t bytes(AttentionScope scope, int64_t batch, int64_t channels, int64_t element_size) const override;
  // SequenceParallel: spatial positions are sharded.
  at::Tensor shard(const at::Tensor& tokens) const override;
  int64_t shard_begin() const override { return s_.offsets[comm_.rank()]; }
  at::Tensor gather(const at::Tensor& local) override;

  const Split& frames() const { return t_; }
  const Split& positions() const { return s_; }

 private:
  // One all-to-all in flight (its tensors kept until it completes).
  struct Exchange {
    std::vector<at::Tensor> send, recv;
    at::Tensor buffer;  // start_to_frames: what arrives, [S, B, F_g, C]
    std::unique_ptr<PendingCollective> pending;
  };
  Exchange start_to_frames(const at::Tensor& by_position, const std::vector<Split>& sub, int g);
  Exchange start_to_space(const at::Tensor& by_position, const std::vector<Split>& sub, int g);
  // Every rank's frame count split into `groups`.
  std::vector<Split> split_frames(int groups) const;
  void check_space_shard(const at::Tensor& x) const;

  Communicator& comm_;
  Split t_, s_;
};

}  // namespace ditto
