// Sequence parallelism for full-attention DiTs (Wan). Ulysses: the flattened token sequence is sharded
// over the ranks; around each self-attention one all-to-all trades sequence for heads (each rank then
// holds every token of its heads) and one trades them back. Cross-attention, the MLP and the head
// stay local. Shares of tokens and of heads may be uneven: per-rank sizes, no padding.
#pragma once
#include "dist/sequence_parallel.h"

namespace ditto {

// The flattened token sequence sharded over the ranks (uneven shares, no padding): what every
// full-attention layout rests in.
class SequenceShardLayout : public SequenceParallel {
 public:
  SequenceShardLayout(Communicator& comm, const TokenGrid& grid);
  int64_t sequence_begin() const override { return tokens_.offsets[comm_.rank()]; }
  // [B, T', S, K] -> this rank's share of the flattened sequence, [B, 1, n_r, K].
  at::Tensor shard(const at::Tensor& tokens) const override;
  int64_t shard_begin() const override { return sequence_begin(); }
  at::Tensor gather(const at::Tensor& local) override;  // -> [B, T', S, K]
  const Split& tokens() const { return tokens_; }

 protected:
  Communicator& comm_;
  TokenGrid grid_;
  Split tokens_;
};

// Ulysses' exchanges in N head groups (default 1): group g + 1's all-to-all in flight while group g
// attends, and group g's outputs on their way back while g + 1 attends. The same attention, head by
// head; on a GPU the communication stream runs beside the compute stream.
void set_ulysses_head_groups(int groups);
int ulysses_head_groups();

class UlyssesLayout : public SequenceShardLayout {
 public:
  // heads: the model's attention heads (at least one per rank).
  UlyssesLayout(Communicator& comm, const TokenGrid& grid, int heads);
  std::string name() const override { return "ulysses"; }

  // q, k, v [B, H, n_r, D] (this rank's tokens, every head) -> attention over the whole sequence for
  // this rank's heads -> [B, H, n_r, D]. q, k and v travel in one all-to-all, the output in another.
  at::Tensor attention(AttentionScope scope, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const Attend& attend) override;
  int64_t bytes(AttentionScope scope, int64_t batch, int64_t channels, int64_t element_size) const override;
  const Split& heads() const { return heads_; }

 private:
  at::Tensor attention_in_groups(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Attend& attend, int groups);

  int heads_total_;
  Split heads_;
};

// Context parallelism for more ranks than heads: every rank gathers the keys and values of the whole
// sequence (one all-gather each, every head) and attends with its own queries: the exact attention
// that ring attention computes, with one all-gather instead of P - 1 ring steps and no overlap.
// 2 (P - 1) n_r H D elements sent per rank and attention, against Ulysses' 4 (P - 1) / P of it: the
// layout for ranks beyond the head count (Wan 2.1 1.3B's 12 heads on 16 GPUs).
class KvGatherLayout : public SequenceShardLayout {
 public:
  KvGatherLayout(Communicator& comm, const TokenGrid& grid) : SequenceShardLayout(comm, grid) {}
  std::string name() const override { return "kv-gather"; }
  at::Tensor attention(AttentionScope scope, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const Attend& attend) override;
  int64_t bytes(AttentionScope scope, int64_t batch, int64_t channels, int64_t element_size) const override;
};

}  // namespace ditto
