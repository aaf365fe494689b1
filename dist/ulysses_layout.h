// Ulysses sequence parallelism for full-attention DiTs (Wan): the flattened token sequence is sharded
// over the ranks; around each self-attention one all-to-all trades sequence for heads (each rank then
// holds every token of its heads) and one trades them back. Cross-attention, the MLP and the head
// stay local. Shares of tokens and of heads may be uneven: per-rank sizes, no padding.
#pragma once
#include "dist/sequence_parallel.h"

namespace ditto {

class UlyssesLayout : public SequenceParallel {
 public:
  // heads: the model's attention heads (at least one per rank).
  UlyssesLayout(Communicator& comm, const TokenGrid& grid, int heads);
  std::string name() const override { return "ulysses"; }

  // q, k, v [B, H, n_r, D] (this rank's tokens, every head) -> attention over the whole sequence for
  // this rank's heads -> [B, H, n_r, D]. q, k and v travel in one all-to-all, the output in another.
  at::Tensor attention(AttentionScope scope, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const Attend& attend) override;
  int64_t bytes(AttentionScope scope, int64_t batch, int64_t channels, int64_t element_size) const override;
  int64_t sequence_begin() const override { return tokens_.offsets[comm_.rank()]; }
  // [B, T', S, K] -> this rank's share of the flattened sequence, [B, 1, n_r, K].
  at::Tensor shard(const at::Tensor& tokens) const override;
  int64_t shard_begin() const override { return sequence_begin(); }
  at::Tensor gather(const at::Tensor& local) override;  // -> [B, T', S, K]

  const Split& tokens() const { return tokens_; }
  const Split& heads() const { return heads_; }

 private:
  Communicator& comm_;
  TokenGrid grid_;
  int heads_total_;
  Split tokens_, heads_;
};

}  // namespace ditto
